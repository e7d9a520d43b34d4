//! The real engines' own costs, without a server: one durable produce on
//! the configured bus, and the Mongo-wire store's single vs batched appends.

use anyhow::Context;
use hdrhistogram::Histogram;
use parley_server::client::percentiles;
use std::time::Instant;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (eval \"$(scripts/infra env)\")"))
}

/// Sequential publishes to a throw-away topic prefix: the latency of one
/// durable (acks=all, idempotent) produce as configured.
pub async fn produce(count: usize) -> anyhow::Result<()> {
    use parley::bus::EventBus;
    let brokers = env("KAFKA_BROKERS")?;
    let prefix = format!("bench{}.", std::process::id());
    let bus = parley::bus::kafka::KafkaBus::connect(&brokers, &prefix, 8, 1).await?;
    let mut h = Histogram::<u64>::new(3)?;
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let began = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        bus.publish(
            parley::bus::Topic::ChatMessages,
            &format!("k{}", i % 64),
            payload.clone(),
        )
        .await?;
        h.record(
            u64::try_from(t.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )?;
    }
    println!(
        "produce: {count} sequential publishes (200 B, acks=all, idempotent) in {:.2} s; {}",
        began.elapsed().as_secs_f64(),
        percentiles(&h)
    );
    Ok(())
}

/// Appends `count` messages one per call, then `count` in batches, to a
/// throw-away database.
pub async fn insert(count: usize, batch: usize) -> anyhow::Result<()> {
    use parley::store::Store;
    let url = env("MONGODB_URL")?;
    let database = format!("bench{}", std::process::id());
    let store = parley::store::mongo::MongoStore::connect(&url, Some(&database)).await?;
    let message = |conversation: &str, i: usize| parley::proto::ChatMessage {
        id: parley::ids::MessageId::generate().into_string(),
        conversation_id: conversation.to_owned(),
        seq: 0,
        from: "bench-user".into(),
        body: "x".repeat(100),
        sent_at_ms: parley::time::now_ms(),
        client_msg_id: format!("{conversation}-{i}"),
        ..Default::default()
    };
    for (label, size) in [("single", 1), ("batched", batch.max(1))] {
        let conversation = format!("{label}-conversation");
        store
            .ensure_direct(&conversation, "bench-user", "bench-peer", 0)
            .await?;
        let began = Instant::now();
        let mut i = 0;
        while i < count {
            let chunk: Vec<_> = (i..(i + size).min(count))
                .map(|n| message(&conversation, n))
                .collect();
            i += chunk.len();
            store.append_messages(&chunk).await?;
        }
        let secs = began.elapsed().as_secs_f64();
        println!(
            "insert ({label}, {size} per append): {count} messages in {secs:.2} s = {:.0} msgs/s",
            count as f64 / secs
        );
    }
    Ok(())
}
