//! `EdgeService`: how services push frames to the sockets this edge holds.

use crate::sessions::{Sent, SessionTable};
use axum::extract::ws::Utf8Bytes;
use parley::proto::edge_service_server::{EdgeService, EdgeServiceServer};
use parley::proto::{DeliverReply, DeliverRequest};
use tonic::{Request, Response, Status};

pub const NAMES: &[&str] = &["parley.v1.EdgeService"];

pub fn server(sessions: SessionTable) -> EdgeServiceServer<EdgeGrpc> {
    EdgeServiceServer::new(EdgeGrpc { sessions })
}

#[derive(Debug, Clone)]
pub struct EdgeGrpc {
    sessions: SessionTable,
}

#[tonic::async_trait]
impl EdgeService for EdgeGrpc {
    async fn deliver(
        &self,
        req: Request<DeliverRequest>,
    ) -> Result<Response<DeliverReply>, Status> {
        let mut delivered = 0u32;
        let mut unknown_sessions = Vec::new();
        for d in req.into_inner().deliveries {
            // One shared buffer per frame, whatever the number of sessions.
            let frame = Utf8Bytes::from(d.frame);
            for sid in d.session_ids {
                match self.sessions.send(&sid, &frame) {
                    Sent::Queued => delivered += 1,
                    Sent::Unknown => unknown_sessions.push(sid),
                    Sent::Kicked => {}
                }
            }
        }
        metrics::counter!("parley_edge_frames_pushed_total").increment(u64::from(delivered));
        Ok(Response::new(DeliverReply {
            delivered,
            unknown_sessions,
        }))
    }
}
