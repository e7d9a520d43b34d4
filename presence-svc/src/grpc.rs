//! The tonic adapter for `PresenceService`.

use crate::presence::Presence;
use parley::ApiError;
use parley::ids::UserId;
use parley::proto::presence_service_server::{PresenceService, PresenceServiceServer};
use parley::proto::{
    CloseSessionReply, CloseSessionRequest, GetPresenceReply, GetPresenceRequest, HeartbeatReply,
    HeartbeatRequest, OpenSessionReply, OpenSessionRequest, SessionRef, SetStatusReply,
    SetStatusRequest,
};
use parley::registry::{PresenceRecord, SessionEntry};
use tonic::{Request, Response, Status};

pub const NAMES: &[&str] = &["parley.v1.PresenceService"];

pub fn server(presence: Presence) -> PresenceServiceServer<PresenceGrpc> {
    PresenceServiceServer::new(PresenceGrpc { presence })
}

#[derive(Debug, Clone)]
pub struct PresenceGrpc {
    presence: Presence,
}

fn session(raw: Option<SessionRef>) -> Result<SessionEntry, ApiError> {
    let s = raw.ok_or_else(|| ApiError::invalid("session is required"))?;
    if s.session_id.is_empty() || s.edge_id.is_empty() {
        return Err(ApiError::invalid("session_id and edge_id are required"));
    }
    Ok(SessionEntry {
        session_id: s.session_id,
        user_id: UserId::parse(&s.user_id)?.into_string(),
        edge_id: s.edge_id,
    })
}

fn to_proto(p: PresenceRecord) -> parley::proto::Presence {
    parley::proto::Presence {
        user_id: p.user_id,
        status: p.status,
        last_seen_ms: p.last_seen_ms,
    }
}

#[tonic::async_trait]
impl PresenceService for PresenceGrpc {
    async fn open_session(
        &self,
        req: Request<OpenSessionRequest>,
    ) -> Result<Response<OpenSessionReply>, Status> {
        let s = session(req.into_inner().session)?;
        let online = self.presence.open_session(&s).await?;
        Ok(Response::new(OpenSessionReply {
            online_contacts: online.into_iter().map(to_proto).collect(),
        }))
    }

    async fn close_session(
        &self,
        req: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionReply>, Status> {
        let r = req.into_inner();
        let s = session(r.session)?;
        self.presence.close_session(&s, r.clean).await?;
        Ok(Response::new(CloseSessionReply {}))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let sessions = req
            .into_inner()
            .sessions
            .into_iter()
            .map(|s| session(Some(s)))
            .collect::<Result<Vec<_>, _>>()?;
        self.presence.heartbeat(&sessions).await?;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn set_status(
        &self,
        req: Request<SetStatusRequest>,
    ) -> Result<Response<SetStatusReply>, Status> {
        let r = req.into_inner();
        let user = UserId::parse(&r.user_id)?;
        self.presence.set_status(&user, &r.status).await?;
        Ok(Response::new(SetStatusReply {}))
    }

    async fn get_presence(
        &self,
        req: Request<GetPresenceRequest>,
    ) -> Result<Response<GetPresenceReply>, Status> {
        let ids = req.into_inner().user_ids;
        if ids.len() > 1000 {
            return Err(ApiError::invalid("at most 1000 users per call").into());
        }
        let presences = self.presence.get(&ids).await?;
        Ok(Response::new(GetPresenceReply {
            presences: presences.into_iter().map(to_proto).collect(),
        }))
    }
}
