//! The `push-notifications` consumer: POSTs each event to a webhook (the
//! bridge to APNs/FCM/e-mail is the receiver's business), retrying with
//! exponential backoff. It is its own consumer group, so a slow or failing
//! webhook delays notifications, never message delivery.
//!
//! Delivery to the webhook is at least once: a replayed event is POSTed
//! again with the same `Idempotency-Key` header (`<message id>:<user id>`).
//!
//! Without a webhook it still consumes and commits (the events are logged at
//! debug level): the embedded bus keeps a record until every group on its
//! topic has consumed it, so an unconsumed topic would grow forever.

use futures::StreamExt;
use parley::backends::Backends;
use parley::bus::{Record, Topic, next_batch_until, subscribe_until};
use parley::proto::PushNotification;
use parley::protocol::message_json;
use prost::Message;
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "notifier";
/// Events of one batch, all POSTed at once: a batch takes at most
/// [`Webhook::give_up_after`], well inside the consumer's poll interval
/// (30 s), so a failing webhook cannot get the notifier evicted from its
/// group and its batches re-sent.
const BATCH: usize = 16;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where notifications go and how hard to try.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// An `http://` URL (this build's HTTP client has no TLS: put a
    /// TLS-terminating proxy in front of an `https` receiver).
    pub url: String,
    /// Attempts per event before it is dropped (logged and counted).
    pub max_attempts: u32,
    /// Nor is an event retried after this long since its first attempt.
    pub give_up_after: Duration,
    /// The wait after the first failure; doubled after each next one.
    pub first_backoff: Duration,
    /// Per attempt.
    pub timeout: Duration,
}

impl Webhook {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_attempts: 8,
            give_up_after: Duration::from_secs(20),
            first_backoff: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Worth trying again: no answer, a 5xx, 408 or 429.
    Retry(String),
    /// The receiver refused the event itself (another 4xx): never retried.
    Refused(u16),
}

fn classify(status: reqwest::StatusCode) -> Attempt {
    match status.as_u16() {
        200..=299 => Attempt::Delivered,
        408 | 429 | 500..=599 => Attempt::Retry(format!("HTTP {status}")),
        other => Attempt::Refused(other),
    }
}

/// Consumes until `shutdown`, committing each batch once every event in it
/// was delivered or given up on (at once without a webhook).
pub async fn run(backends: Backends, webhook: Option<Webhook>, shutdown: CancellationToken) {
    let target = match &webhook {
        Some(webhook) => match reqwest::Client::builder().timeout(webhook.timeout).build() {
            Ok(client) => Some((client, webhook)),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; notifications are dropped");
                None
            }
        },
        None => None,
    };
    let bus = backends.bus.as_ref();
    let Some(mut subscription) =
        subscribe_until(bus, GROUP, Topic::PushNotifications, &shutdown).await
    else {
        return;
    };
    match &target {
        Some((_, webhook)) => tracing::info!(url = %webhook.url, "notifier started"),
        None => tracing::debug!("no webhook: notifications are consumed and dropped"),
    }
    while let Some(batch) = next_batch_until(subscription.as_mut(), BATCH, &shutdown).await {
        let Some((client, webhook)) = &target else {
            tracing::debug!(events = batch.len(), "notifications dropped (no webhook)");
            if let Err(e) = subscription.commit(&batch).await {
                tracing::warn!(error = %e, "notifier offset commit failed");
            }
            continue;
        };
        let finished = futures::stream::iter(0..batch.len())
            .map(|i| notify(client, webhook, &batch[i], &shutdown))
            .buffer_unordered(BATCH)
            .collect::<Vec<bool>>()
            .await;
        if finished.contains(&false) {
            // Shutting down mid-retry: the batch is consumed again later.
            return;
        }
        if let Err(e) = subscription.commit(&batch).await {
            tracing::warn!(error = %e, "notifier offset commit failed");
        }
    }
}

/// Delivers one event, retrying; false only when shutdown interrupted it.
async fn notify(
    client: &reqwest::Client,
    webhook: &Webhook,
    record: &Record,
    shutdown: &CancellationToken,
) -> bool {
    let Ok(PushNotification {
        user_id,
        message: Some(message),
    }) = PushNotification::decode(record.payload.as_ref())
    else {
        tracing::error!(offset = record.offset, "undecodable notification skipped");
        return true;
    };
    let body = json!({
        "type": "new_message",
        "user_id": user_id,
        "message": message_json(&message),
    });
    let key = format!("{}:{user_id}", message.id);
    let mut backoff = webhook.first_backoff;
    let deadline = tokio::time::Instant::now() + webhook.give_up_after;
    for attempt in 1..=webhook.max_attempts {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let post = client
            .post(&webhook.url)
            .header("Idempotency-Key", &key)
            .timeout(webhook.timeout.min(left))
            .json(&body)
            .send();
        let outcome = match post.await {
            Ok(resp) => classify(resp.status()),
            Err(e) => Attempt::Retry(e.to_string()),
        };
        match outcome {
            Attempt::Delivered => {
                metrics::counter!("parley_notifications_delivered_total").increment(1);
                return true;
            }
            Attempt::Refused(status) => {
                tracing::warn!(%key, status, "webhook refused a notification; dropped");
                metrics::counter!("parley_notifications_dropped_total").increment(1);
                return true;
            }
            Attempt::Retry(why) => {
                tracing::debug!(%key, attempt, %why, "webhook attempt failed");
                if attempt == webhook.max_attempts
                    || tokio::time::Instant::now() + backoff >= deadline
                {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return false,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::warn!(%key, "webhook kept failing; notification dropped");
    metrics::counter!("parley_notifications_dropped_total").increment(1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |code| reqwest::StatusCode::from_u16(code).unwrap_or_default();
        assert_eq!(classify(status(204)), Attempt::Delivered);
        assert!(matches!(classify(status(503)), Attempt::Retry(_)));
        assert!(matches!(classify(status(429)), Attempt::Retry(_)));
        assert!(matches!(classify(status(408)), Attempt::Retry(_)));
        assert_eq!(classify(status(400)), Attempt::Refused(400));
        assert_eq!(classify(status(404)), Attempt::Refused(404));
    }
}
