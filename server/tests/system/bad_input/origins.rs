//! Pages of other sites cannot open `/ws`, and every response says what
//! the page may load.

use crate::helpers::*;
use serde_json::json;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The HTTP status of a `/ws` handshake sent with this `Origin` (101 when
/// the socket opened).
async fn handshake(app: &TestApp, origin: &str) -> u16 {
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    match connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake failed below HTTP: {e}"),
    }
}

#[tokio::test]
async fn ws_handshakes_from_other_origins_get_403() {
    let app = spawn_app().await;
    for foreign in [
        "http://evil.example",
        "null",
        // Same host, another port: another origin.
        &format!("http://{}:{}", app.addr.ip(), app.addr.port() + 1),
    ] {
        assert_eq!(handshake(&app, foreign).await, 403, "{foreign}");
    }
    // The page's own origin, and clients that send none, get in.
    assert_eq!(handshake(&app, &format!("http://{}", app.addr)).await, 101);
    let alice = app.register("alice").await;
    let mut ws = app.connect(&alice).await;
    acked(&mut ws, json!({"type": "ping"})).await;

    let listed = spawn_app_with(|c| {
        c.allowed_origins = parley_edge::origin::AllowedOrigins::new(&[
            "https://app.example",
            "http://localhost:5173",
        ]);
    })
    .await;
    assert_eq!(handshake(&listed, "https://app.example").await, 101);
    assert_eq!(handshake(&listed, "http://localhost:5173").await, 101);
    assert_eq!(handshake(&listed, "https://evil.example").await, 403);
}

#[tokio::test]
async fn responses_carry_a_strict_csp_and_nosniff() {
    let app = spawn_app().await;
    for path in ["/", "/app.js", "/style.css", "/api/services", "/health"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    }
    // The page works under it: no inline script or style to be blocked.
    let page = app.http.get(app.url("/")).send().await.unwrap();
    let html = page.text().await.unwrap();
    let scripts = html.matches("<script").count();
    assert!(scripts > 0);
    assert_eq!(
        html.matches("<script src=").count(),
        scripts,
        "inline script"
    );
    assert!(
        !html.contains("<style") && !html.contains(" style="),
        "inline style"
    );
    let handler = html.split(" on").skip(1).any(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    });
    assert!(!handler, "inline event handler");
}
