//! Real clients confirm where things land on the real engines: kcat reads
//! the events on `chat-messages`, Redis holds the registry with TTLs, and
//! the Mongo-wire store holds exactly one document per message after a
//! resend and after a consumer replay. Skipped (saying so) on the embedded
//! run; scripts/test runs them against Kafka, Redis and FerretDB.

use crate::helpers::*;
use bytes::Bytes;
use mongodb::bson::doc;
use prost::Message;
use serde_json::json;

#[tokio::test]
async fn kcat_reads_chat_messages_keyed_by_conversation() {
    if !real_engines("this landing check") {
        return;
    }
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let sent = a.send_message(&bob.id, "via kafka").await;
    a.expect("new_message").await;
    let topic = format!("{}chat-messages", app.backends.topic_prefix);
    let brokers = app.backends.kafka_brokers.clone().unwrap();
    let output = tokio::process::Command::new("kcat")
        .args([
            "-b",
            &brokers,
            "-C",
            "-t",
            &topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%k %s\n"])
        .output()
        .await
        .expect("kcat is installed by scripts/infra");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    // Values are protobuf (binary): the key and the body's text are found.
    let conversation = sent["conversation_id"].as_str().unwrap();
    let record = text
        .split(&format!("{conversation} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no record keyed {conversation} in {text}"));
    assert!(record.contains("via kafka"), "{record}");
}

#[tokio::test]
async fn redis_holds_instances_and_sessions_with_ttls() {
    if !real_engines("this landing check") {
        return;
    }
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let _a = app.connect(&alice).await;
    let client = redis::Client::open(app.backends.redis_url.clone().unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = &app.backends.redis_prefix;
    let (_, services) = app.get("/api/services", None).await;
    let edge = services["services"]["edge"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let instance_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:svc:edge:{edge}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=15_000).contains(&instance_ttl),
        "instance TTL {instance_ttl}"
    );
    let session_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:sess:{}", alice.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=60_000).contains(&session_ttl),
        "session TTL {session_ttl}"
    );
}

#[tokio::test]
async fn one_document_per_message_after_a_resend_and_a_replay() {
    if !real_engines("this landing check") {
        return;
    }
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let frame =
        json!({"type": "send_message", "to": bob.id, "client_msg_id": "only-once", "body": "once"});
    let first = a.request(frame.clone(), "r1").await;
    let stored = b.expect("new_message").await["message"].clone();
    let again = a.request(frame, "r2").await;
    assert_eq!(again["message"]["id"], first["message"]["id"]);

    // A consumer replay: the very same event on the topic once more. The
    // sequencer pushes it again (same id, same seq) and stores nothing new.
    let replayed = parley::proto::ChatEvent {
        event: Some(parley::proto::chat_event::Event::MessageSent(
            parley::proto::ChatMessage {
                id: stored["id"].as_str().unwrap().into(),
                conversation_id: stored["conversation_id"].as_str().unwrap().into(),
                seq: 0,
                from: alice.id.clone(),
                body: "once".into(),
                sent_at_ms: stored["sent_at"].as_i64().unwrap(),
                client_msg_id: "only-once".into(),
                ..Default::default()
            },
        )),
    };
    let bus = parley::bus::kafka::KafkaBus::connect(
        app.backends.kafka_brokers.as_deref().unwrap(),
        &app.backends.topic_prefix,
        app.backends.partitions,
        1,
    )
    .await
    .unwrap();
    use parley::bus::EventBus;
    bus.publish(
        parley::bus::Topic::ChatMessages,
        stored["conversation_id"].as_str().unwrap(),
        Bytes::from(replayed.encode_to_vec()),
    )
    .await
    .unwrap();
    let again = b.expect("new_message").await;
    assert_eq!(again["message"]["id"], stored["id"]);
    assert_eq!(again["message"]["seq"], stored["seq"]);

    let messages = app.stored_messages().await;
    let count = messages
        .count_documents(doc! {"from": &alice.id, "client_msg_id": "only-once"})
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(messages.count_documents(doc! {}).await.unwrap(), 1);
}
