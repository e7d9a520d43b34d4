//! The `user-presence` consumer: each change goes to the live sessions of
//! the users who share a conversation with that user.

use crate::presence::Presence;
use parley::bus::{Topic, next_batch_until, subscribe_until};
use parley::proto::PresenceEvent;
use parley::protocol::server;
use parley::push::Outgoing;
use prost::Message;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "presence-svc";

pub async fn run(presence: Presence, shutdown: CancellationToken) {
    let bus = presence.backends.bus.as_ref();
    let Some(mut subscription) = subscribe_until(bus, GROUP, Topic::UserPresence, &shutdown).await
    else {
        return;
    };
    while let Some(batch) = next_batch_until(subscription.as_mut(), 256, &shutdown).await {
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
