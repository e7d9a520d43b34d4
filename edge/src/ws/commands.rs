//! One client frame in, the frames to answer with out. Each command is one
//! gRPC call to the service that owns it; errors become `error` frames with
//! the frame's `ref`, and the connection stays usable.

use super::intake::{Limiter, busy, limiter};
use crate::state::EdgeState;
use parley::ids::ConversationId;
use parley::proto::change_group_request::Change as GroupChange;
use parley::proto::{
    ChangeGroupRequest, ChangeMessageRequest, CreateGroupRequest, HistoryRequest,
    MarkReceiptRequest, MemberList, MessageKind, ReceiptKind, SendMessageRequest, SetStatusRequest,
    SyncRequest, TypingRequest, User,
};
use parley::protocol::{ClientFrame, conversation_json, decode, message_json, server};
use parley::{ApiError, ErrorCode};
use serde_json::json;

/// Typing events are cheap for the sender and fan out to every member.
const TYPING_PER_SECOND: u32 = 3;
const TYPING_BURST: u32 = 6;

/// The joined state of one connection.
pub struct Connection {
    state: EdgeState,
    user: User,
    typing: Limiter,
}

impl Handled {
    fn answer(frame: String) -> Self {
        Self {
            frames: vec![frame],
            shed: false,
        }
    }
}

/// What came of one frame.
pub struct Handled {
    /// The frames to write back, in order.
    pub frames: Vec<String>,
    /// It was a resendable command refused as late.
    pub shed: bool,
}

impl Connection {
    pub fn new(state: EdgeState, user: User) -> Self {
        Self {
            state,
            user,
            typing: limiter(TYPING_PER_SECOND, TYPING_BURST),
        }
    }

    /// Handles one text frame; `late` (see [`super::intake`]) refuses a
    /// resendable command (send, edit, delete, react) with `unavailable`
    /// without trying it.
    pub async fn handle(&mut self, text: &str, late: bool) -> Handled {
        let envelope = match decode(text) {
            Ok(e) => e,
            Err(bad) => {
                return Handled::answer(server::error(bad.reference.as_deref(), &bad.error));
            }
        };
        let reference = envelope.reference.as_deref();
        if late && envelope.frame.resendable() {
            metrics::counter!("parley_edge_frames_shed_total").increment(1);
            return Handled {
                frames: vec![server::error(reference, &busy())],
                shed: true,
            };
        }
        let frames = match self.dispatch(envelope.frame, reference).await {
            Ok(frames) => frames,
            Err(e) => vec![server::error(reference, &e)],
        };
        Handled {
            frames,
            shed: false,
        }
    }

    async fn dispatch(
        &mut self,
        frame: ClientFrame,
        reference: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        let me = self.user.id.clone();
        match frame {
            ClientFrame::Join { .. } => Err(ApiError::invalid("already joined")),
            ClientFrame::SendMessage {
                to,
                conversation_id,
                client_msg_id,
                body,
            } => {
                let reply = self
                    .state
                    .chat()
                    .await?
                    .send_message(SendMessageRequest {
                        user_id: me,
                        to: to.unwrap_or_default(),
                        conversation_id: conversation_id.unwrap_or_default(),
                        client_msg_id: client_msg_id.unwrap_or_default(),
                        body,
                    })
                    .await?
                    .into_inner();
                let m = reply
                    .message
                    .ok_or_else(|| ApiError::new(ErrorCode::Internal, "empty reply"))?;
                Ok(vec![server::ack(
                    reference,
                    json!({"message": {
                        "id": m.id,
                        "conversation_id": m.conversation_id,
                        "client_msg_id": m.client_msg_id,
                        "sent_at": m.sent_at_ms,
                    }}),
                )])
            }
            ClientFrame::MarkDelivered {
                conversation_id,
                up_to_seq,
            } => {
                self.mark(conversation_id, ReceiptKind::Delivered, up_to_seq)
                    .await?;
                Ok(ack_if_asked(reference))
            }
            ClientFrame::MarkRead {
                conversation_id,
                up_to_seq,
            } => {
                self.mark(conversation_id, ReceiptKind::Read, up_to_seq)
                    .await?;
                Ok(ack_if_asked(reference))
            }
            ClientFrame::Typing {
                to,
                conversation_id,
                state,
            } => {
                if self.typing.check().is_err() {
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        "typing events are rate limited",
                    ));
                }
                self.state
                    .chat()
                    .await?
                    .typing(TypingRequest {
                        user_id: me,
                        to: to.unwrap_or_default(),
                        conversation_id: conversation_id.unwrap_or_default(),
                        state: state.as_str().to_owned(),
                    })
                    .await?;
                Ok(ack_if_asked(reference))
            }
            ClientFrame::Sync { since } => {
                let reply = self
                    .state
                    .chat()
                    .await?
                    .sync(SyncRequest {
                        user_id: me,
                        since: since.into_iter().collect(),
                        limit_per_conversation: 0,
                    })
                    .await?
                    .into_inner();
                // Messages as `new_message` (as they are now), changes as
                // `message_edited`/`message_deleted`/`reaction`, in seq order.
                let mut frames: Vec<String> = reply.messages.iter().map(server::entry).collect();
                frames.push(server::ack(
                    reference,
                    json!({"truncated": reply.truncated}),
                ));
                Ok(frames)
            }
            ClientFrame::History {
                conversation_id,
                before_seq,
                limit,
            } => {
                let conversation_id = ConversationId::parse(&conversation_id)?.into_string();
                let reply = self
                    .state
                    .chat()
                    .await?
                    .history(HistoryRequest {
                        user_id: me,
                        conversation_id,
                        before_seq: before_seq.unwrap_or(0),
                        limit: limit.unwrap_or_default().0,
                    })
                    .await?
                    .into_inner();
                let messages: Vec<_> = reply.messages.iter().map(message_json).collect();
                Ok(vec![server::ack(
                    reference,
                    json!({"messages": messages, "has_more": reply.has_more}),
                )])
            }
            ClientFrame::SetStatus { status } => {
                self.state
                    .presence()
                    .await?
                    .set_status(SetStatusRequest {
                        user_id: me,
                        status,
                    })
                    .await?;
                Ok(ack_if_asked(reference))
            }
            ClientFrame::CreateGroup { name, members } => {
                let reply = self
                    .state
                    .chat()
                    .await?
                    .create_group(CreateGroupRequest {
                        user_id: me,
                        name,
                        members,
                    })
                    .await?
                    .into_inner();
                let group = reply
                    .conversation
                    .ok_or_else(|| ApiError::new(ErrorCode::Internal, "empty reply"))?;
                Ok(vec![server::ack(
                    reference,
                    json!({"conversation": conversation_json(&group)}),
                )])
            }
            ClientFrame::AddMembers {
                conversation_id,
                members,
            } => {
                let change = GroupChange::AddMembers(MemberList { members });
                self.change_group(conversation_id, change, reference).await
            }
            ClientFrame::RemoveMembers {
                conversation_id,
                members,
            } => {
                let change = GroupChange::RemoveMembers(MemberList { members });
                self.change_group(conversation_id, change, reference).await
            }
            ClientFrame::Leave { conversation_id } => {
                self.change_group(conversation_id, GroupChange::Leave(true), reference)
                    .await
            }
            ClientFrame::RenameGroup {
                conversation_id,
                name,
            } => {
                self.change_group(conversation_id, GroupChange::Rename(name), reference)
                    .await
            }
            ClientFrame::EditMessage {
                conversation_id,
                message_id,
                client_msg_id,
                body,
            } => {
                let request = ChangeMessageRequest {
                    kind: MessageKind::Edit as i32,
                    body,
                    ..self.message_change(conversation_id, message_id, client_msg_id)?
                };
                self.change_message(request, reference).await
            }
            ClientFrame::DeleteMessage {
                conversation_id,
                message_id,
                client_msg_id,
            } => {
                let request = ChangeMessageRequest {
                    kind: MessageKind::Delete as i32,
                    ..self.message_change(conversation_id, message_id, client_msg_id)?
                };
                self.change_message(request, reference).await
            }
            ClientFrame::React {
                conversation_id,
                message_id,
                client_msg_id,
                emoji,
                on,
            } => {
                let request = ChangeMessageRequest {
                    kind: MessageKind::Reaction as i32,
                    emoji,
                    on,
                    ..self.message_change(conversation_id, message_id, client_msg_id)?
                };
                self.change_message(request, reference).await
            }
            ClientFrame::Ping {} => Ok(vec![server::ack(reference, json!({}))]),
        }
    }

    /// Asks chat-svc for a group change; answers the ack.
    async fn change_group(
        &self,
        conversation_id: String,
        change: GroupChange,
        reference: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        let conversation_id = ConversationId::parse(&conversation_id)?.into_string();
        self.state
            .chat()
            .await?
            .change_group(ChangeGroupRequest {
                user_id: self.user.id.clone(),
                conversation_id,
                change: Some(change),
            })
            .await?;
        Ok(vec![server::ack(reference, json!({}))])
    }

    /// A change request naming the caller, the conversation, the message
    /// and the client's idempotency key (checked by chat-svc).
    fn message_change(
        &self,
        conversation_id: String,
        message_id: String,
        client_msg_id: Option<String>,
    ) -> Result<ChangeMessageRequest, ApiError> {
        Ok(ChangeMessageRequest {
            user_id: self.user.id.clone(),
            conversation_id: ConversationId::parse(&conversation_id)?.into_string(),
            message_id,
            client_msg_id: client_msg_id.unwrap_or_default(),
            ..Default::default()
        })
    }

    /// Queues the change; the ack carries its id, conversation and
    /// `client_msg_id` (its seq comes with the `message_edited`/
    /// `message_deleted`/`reaction` every member gets; a resend answered
    /// with a change already stored carries it too), or says `unchanged`
    /// when it would change nothing and went nowhere.
    async fn change_message(
        &self,
        request: ChangeMessageRequest,
        reference: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        let reply = self
            .state
            .chat()
            .await?
            .change_message(request)
            .await?
            .into_inner();
        let change = reply
            .change
            .ok_or_else(|| ApiError::new(ErrorCode::Internal, "empty reply"))?;
        let body = if reply.unchanged {
            // Nothing entered the log, so there is no change id.
            json!({"change": {"message_id": change.target_id, "unchanged": true}})
        } else {
            let mut answer = json!({
                "id": change.id,
                "message_id": change.target_id,
                "conversation_id": change.conversation_id,
                "client_msg_id": change.client_msg_id,
            });
            if change.seq > 0 {
                answer["seq"] = json!(change.seq);
            }
            json!({ "change": answer })
        };
        Ok(vec![server::ack(reference, body)])
    }

    async fn mark(
        &self,
        conversation_id: String,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<(), ApiError> {
        let conversation_id = ConversationId::parse(&conversation_id)?.into_string();
        self.state
            .chat()
            .await?
            .mark_receipt(MarkReceiptRequest {
                user_id: self.user.id.clone(),
                conversation_id,
                kind: kind as i32,
                up_to_seq,
            })
            .await?;
        Ok(())
    }
}

fn ack_if_asked(reference: Option<&str>) -> Vec<String> {
    reference
        .map(|r| vec![server::ack(Some(r), json!({}))])
        .unwrap_or_default()
}
