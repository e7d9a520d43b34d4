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

/// Every role's gRPC server answers health (SERVING) and lists its API
/// through reflection, which is what `grpcurl` uses.
#[tokio::test]
async fn every_grpc_server_serves_health_and_reflection() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app().await;
    let (_, services) = app.get("/api/services", None).await;
    for (kind, service) in [
        ("edge", "parley.v1.EdgeService"),
        ("auth", "parley.v1.AuthService"),
        ("chat", "parley.v1.ChatService"),
        ("presence", "parley.v1.PresenceService"),
    ] {
        let addr = services["services"][kind][0]["grpc_addr"].as_str().unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status, 1, "{kind} is not SERVING");

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("{kind}: unexpected reflection reply");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == service), "{kind}: {names:?}");
        let foreign = names
            .iter()
            .filter(|n| n.starts_with("parley.") && *n != service);
        assert_eq!(
            foreign.count(),
            0,
            "{kind} lists services it does not serve: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{kind}: {names:?}"
        );
    }
}
