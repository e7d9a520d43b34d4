//! The `chat-messages` log as its writers and its consumer group see it:
//! where sends, changes and receipts are queued, and the group whose
//! members sequence them (the sequencer). Apart from the sequencer,
//! so that the roles that queue (chat, receipts) do not depend on it.

use parley::bus::{BusError, EventBus, Topic};
use parley::proto::{ChatEvent, chat_event};
use prost::Message;

/// The consumer group of `chat-messages`: every chat-svc instance.
pub const GROUP: &str = "chat-svc";

/// Queues `event` on `chat-messages`, keyed by its conversation: each
/// conversation's events land on one partition, whose owner sequences them
/// in the order they were queued.
pub async fn queue(bus: &dyn EventBus, event: chat_event::Event) -> Result<(), BusError> {
    let key = match &event {
        chat_event::Event::MessageSent(m) => m.conversation_id.clone(),
        chat_event::Event::Receipt(r) => r.conversation_id.clone(),
    };
    let payload = ChatEvent { event: Some(event) }.encode_to_vec();
    bus.publish(Topic::ChatMessages, &key, bytes::Bytes::from(payload))
        .await
}
