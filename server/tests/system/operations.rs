//! What operators and browsers see besides the chat: health, readiness, the
//! service list, metrics, the embedded web client, graceful shutdown.

use crate::helpers::*;

#[tokio::test]
async fn health_ready_services_and_metrics_answer() {
    let app = spawn_app().await;
    let (status, health) = app.get("/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");

    let (status, ready) = app.get("/ready", None).await;
    assert_eq!(status, 200, "{ready}");
    for kind in ["auth", "chat", "presence"] {
        assert_eq!(ready["services"][kind], "serving");
    }

    let (status, services) = app.get("/api/services", None).await;
    assert_eq!(status, 200);
    for kind in ["edge", "auth", "chat", "presence"] {
        let instances = services["services"][kind].as_array().unwrap();
        assert_eq!(instances.len(), 1, "{kind}: {services}");
        assert!(
            instances[0]["grpc_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
    }

    let alice = app.register("alice").await;
    let _ws = app.connect(&alice).await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("parley_edge_connections"), "{text}");
}

#[tokio::test]
async fn the_web_client_is_served_from_the_binary() {
    let app = spawn_app().await;
    for (path, kind, needle) in [
        ("/", "text/html", "<html"),
        ("/app.js", "text/javascript", "WebSocket"),
        ("/style.css", "text/css", "{"),
    ] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(resp.text().await.unwrap().contains(needle), "{path}");
    }
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_elsewhere() {
    let mut app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut ws = app.connect(&alice).await;
    let node = app._app.take().unwrap();
    node.stop().await;
    assert_eq!(
        ws.closed().await,
        Closed::Code(4002, "server going away".into())
    );
}
