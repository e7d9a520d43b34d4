//! The `user-presence` consumer: each change goes to the live sessions of
//! the users who share a conversation with that user.

use crate::presence::Presence;
use parley::bus::Topic;
use parley::proto::PresenceEvent;
use parley::protocol::server;
use parley::push::Outgoing;
use prost::Message;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "presence-svc";

pub async fn run(presence: Presence, shutdown: CancellationToken) {
    let bus = presence.backends.bus.clone();
    let mut subscription = loop {
        match bus.subscribe(GROUP, Topic::UserPresence).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot join the user-presence consumer group; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    loop {
        let batch = tokio::select! {
            batch = subscription.next_batch(256) => batch,
            () = shutdown.cancelled() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "consume failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut outgoing = Vec::new();
        for record in &batch {
            let Ok(event) = PresenceEvent::decode(record.payload.as_ref()) else {
                tracing::error!(offset = record.offset, "undecodable presence event skipped");
                continue;
            };
            // Presence is ephemeral: a contact list we cannot read now means
            // this change is not shown, and the next one will be.
            match presence.backends.store.contacts(&event.user_id).await {
                Ok(contacts) if !contacts.is_empty() => outgoing.push(Outgoing {
                    users: contacts,
                    frame: server::presence(&event).into(),
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read contacts for presence"),
            }
        }
        presence.pusher.push(outgoing).await;
        if let Err(e) = subscription.commit(&batch).await {
            tracing::warn!(error = %e, "presence offset commit failed");
        }
    }
}
