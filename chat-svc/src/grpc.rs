//! The tonic adapter for `ChatService`: parse ids at the boundary, call
//! [`Chat`], map [`parley::ApiError`] to `Status`.

use crate::changes::{Changed, MessageChange};
use crate::chat::Chat;
use crate::conversations::Target;
use crate::groups::Change;
use parley::ApiError;
use parley::ids::{ConversationId, UserId};
use parley::proto::change_group_request::Change as GroupChangeProto;
use parley::proto::chat_service_server::{ChatService, ChatServiceServer};
use parley::proto::{
    ChangeGroupRequest, ChangeMessageReply, ChangeMessageRequest, CreateGroupRequest, GroupReply,
    HistoryReply, HistoryRequest, ListConversationsReply, ListConversationsRequest,
    MarkReceiptReply, MarkReceiptRequest, MessageKind, SearchMessagesReply, SearchMessagesRequest,
    SendMessageReply, SendMessageRequest, SyncReply, SyncRequest, TypingReply, TypingRequest,
};
use tonic::{Request, Response, Status};

pub const NAMES: &[&str] = &["parley.v1.ChatService"];

pub fn server(chat: Chat) -> ChatServiceServer<ChatGrpc> {
    ChatServiceServer::new(ChatGrpc { chat })
}

#[derive(Debug, Clone)]
pub struct ChatGrpc {
    chat: Chat,
}

fn caller(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::unauthorized("caller identity missing"))
}

#[tonic::async_trait]
impl ChatService for ChatGrpc {
    async fn send_message(
        &self,
        req: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let target = Target::parse(&r.to, &r.conversation_id)?;
        let sent = self
            .chat
            .send(&user, &target, &r.client_msg_id, &r.body)
            .await?;
        Ok(Response::new(SendMessageReply {
            message: Some(sent.message),
            duplicate: sent.duplicate,
        }))
    }

    async fn mark_receipt(
        &self,
        req: Request<MarkReceiptRequest>,
    ) -> Result<Response<MarkReceiptReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let conversation = ConversationId::parse(&r.conversation_id)?;
        let kind = r.kind();
        self.chat
            .mark(&user, &conversation, kind, r.up_to_seq)
            .await?;
        Ok(Response::new(MarkReceiptReply {}))
    }

    async fn typing(&self, req: Request<TypingRequest>) -> Result<Response<TypingReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let target = Target::parse(&r.to, &r.conversation_id)?;
        self.chat.typing(&user, &target, &r.state).await?;
        Ok(Response::new(TypingReply {}))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let conversation = ConversationId::parse(&r.conversation_id)?;
        let page = self
            .chat
            .history(&user, &conversation, r.before_seq, r.limit as usize)
            .await?;
        Ok(Response::new(HistoryReply {
            messages: page.messages,
            has_more: page.has_more,
        }))
    }

    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let missed = self
            .chat
            .sync(&user, &r.since, r.limit_per_conversation as usize)
            .await?;
        Ok(Response::new(SyncReply {
            messages: missed.messages,
            truncated: missed.truncated,
        }))
    }

    async fn list_conversations(
        &self,
        req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsReply>, Status> {
        let user = caller(&req.into_inner().user_id)?;
        let conversations = self.chat.conversations(&user).await?;
        Ok(Response::new(ListConversationsReply { conversations }))
    }

    async fn search_messages(
        &self,
        req: Request<SearchMessagesRequest>,
    ) -> Result<Response<SearchMessagesReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let messages = self.chat.search(&user, &r.query, r.limit as usize).await?;
        Ok(Response::new(SearchMessagesReply { messages }))
    }

    async fn create_group(
        &self,
        req: Request<CreateGroupRequest>,
    ) -> Result<Response<GroupReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let group = self.chat.create_group(&user, &r.name, &r.members).await?;
        Ok(Response::new(GroupReply {
            conversation: Some(group),
        }))
    }

    async fn change_group(
        &self,
        req: Request<ChangeGroupRequest>,
    ) -> Result<Response<GroupReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let conversation = ConversationId::parse(&r.conversation_id)?;
        let change = match r.change {
            Some(GroupChangeProto::AddMembers(list)) => Change::Add(list.members),
            Some(GroupChangeProto::RemoveMembers(list)) => Change::Remove(list.members),
            Some(GroupChangeProto::Leave(_)) => Change::Leave,
            Some(GroupChangeProto::Rename(name)) => Change::Rename(name),
            None => return Err(ApiError::invalid("no change given").into()),
        };
        let group = self.chat.change_group(&user, &conversation, change).await?;
        Ok(Response::new(GroupReply {
            conversation: Some(group),
        }))
    }

    async fn change_message(
        &self,
        req: Request<ChangeMessageRequest>,
    ) -> Result<Response<ChangeMessageReply>, Status> {
        let r = req.into_inner();
        let user = caller(&r.user_id)?;
        let conversation = ConversationId::parse(&r.conversation_id)?;
        let change = match MessageKind::try_from(r.kind) {
            Ok(MessageKind::Edit) => MessageChange::Edit(r.body),
            Ok(MessageKind::Delete) => MessageChange::Delete,
            Ok(MessageKind::Reaction) => MessageChange::React {
                emoji: r.emoji,
                on: r.on,
            },
            _ => return Err(ApiError::invalid("kind must be EDIT, DELETE or REACTION").into()),
        };
        let reply = match self
            .chat
            .change_message(
                &user,
                &conversation,
                &r.message_id,
                &r.client_msg_id,
                change,
            )
            .await?
        {
            Changed::Queued(change) => ChangeMessageReply {
                change: Some(*change),
                unchanged: false,
                duplicate: false,
            },
            Changed::Duplicate(change) => ChangeMessageReply {
                change: Some(*change),
                unchanged: false,
                duplicate: true,
            },
            Changed::Unchanged {
                conversation_id,
                message_id,
            } => ChangeMessageReply {
                change: Some(parley::proto::ChatMessage {
                    conversation_id,
                    target_id: message_id,
                    ..Default::default()
                }),
                unchanged: true,
                duplicate: false,
            },
        };
        Ok(Response::new(reply))
    }
}
