//! Pushing frames to users: find their live sessions in the registry, group
//! them by the edge that holds them, and make one `EdgeService.Deliver` call
//! per edge. Best effort: a client that misses a push gets it from `sync`.

use crate::discovery::{Discovery, kind};
use crate::proto::edge_service_client::EdgeServiceClient;
use crate::proto::{DeliverRequest, Delivery};
use crate::registry::SessionEntry;
use std::collections::HashMap;
use std::sync::Arc;

/// One frame for all sessions of some users.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub users: Vec<String>,
    /// Encoded once, shared by every session it goes to.
    pub frame: Arc<str>,
}

/// What a push reached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Session writes made.
    pub writes: usize,
    /// Users of the batch that no session write reached: no session in the
    /// registry, or only sessions on edges that are gone or no longer hold
    /// them (the candidates for an offline notification).
    pub sessionless: std::collections::HashSet<String>,
}

#[derive(Clone, Debug)]
pub struct Pusher {
    discovery: Discovery,
}

impl Pusher {
    pub fn new(discovery: Discovery) -> Self {
        Self { discovery }
    }

    /// Delivers every frame to every live session of its users; frames keep
    /// their order per session. Answers how many session writes were made.
    pub async fn push(&self, batch: Vec<Outgoing>) -> usize {
        self.push_reporting(batch).await.writes
    }

    /// [`Pusher::push`], also answering which users had no live session.
    /// When sessions cannot be looked up nobody is reported sessionless:
    /// an unknown is not an absence.
    pub async fn push_reporting(&self, batch: Vec<Outgoing>) -> Pushed {
        if batch.is_empty() {
            return Pushed::default();
        }
        let mut users: Vec<String> = batch.iter().flat_map(|o| o.users.iter().cloned()).collect();
        users.sort();
        users.dedup();
        let registry = self.discovery.registry();
        let sessions = match registry.sessions_of(&users).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up sessions; push skipped");
                return Pushed::default();
            }
        };
        let mut by_user: HashMap<&str, Vec<&SessionEntry>> = HashMap::new();
        for s in &sessions {
            by_user.entry(s.user_id.as_str()).or_default().push(s);
        }
        let no_session = || -> std::collections::HashSet<String> {
            users
                .iter()
                .filter(|u| !by_user.contains_key(u.as_str()))
                .cloned()
                .collect()
        };
        // edge id → deliveries, in batch order.
        let mut per_edge: HashMap<&str, Vec<Delivery>> = HashMap::new();
        for out in &batch {
            let mut per_edge_sessions: HashMap<&str, Vec<String>> = HashMap::new();
            for user in &out.users {
                for s in by_user.get(user.as_str()).into_iter().flatten() {
                    per_edge_sessions
                        .entry(s.edge_id.as_str())
                        .or_default()
                        .push(s.session_id.clone());
                }
            }
            for (edge, session_ids) in per_edge_sessions {
                per_edge.entry(edge).or_default().push(Delivery {
                    session_ids,
                    frame: out.frame.to_string(),
                });
            }
        }
        if per_edge.is_empty() {
            return Pushed {
                writes: 0,
                sessionless: no_session(),
            };
        }
        let edges: HashMap<String, String> = match self.discovery.instances(kind::EDGE).await {
            Ok(list) => list.into_iter().map(|e| (e.id, e.grpc_addr)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up edges; push skipped");
                return Pushed {
                    writes: 0,
                    sessionless: no_session(),
                };
            }
        };
        let calls = per_edge.into_iter().map(|(edge, deliveries)| {
            let addr = edges.get(edge).cloned();
            let sessions: Vec<SessionEntry> = sessions
                .iter()
                .filter(|s| s.edge_id == edge)
                .cloned()
                .collect();
            let discovery = self.discovery.clone();
            async move {
                let Some(addr) = addr else {
                    tracing::debug!(%edge, "edge not registered; its sessions are stale");
                    return (0, Vec::new());
                };
                let channel = match discovery.channel_at(&addr) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%edge, error = %e, "no channel to edge");
                        return (0, Vec::new());
                    }
                };
                match EdgeServiceClient::new(channel)
                    .deliver(DeliverRequest { deliveries })
                    .await
                {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        // Sessions the edge no longer holds are stale entries.
                        for stale in &reply.unknown_sessions {
                            if let Some(s) = sessions.iter().find(|s| &s.session_id == stale) {
                                let _ = discovery.registry().remove_session(s).await;
                            }
                        }
                        let reached = sessions
                            .iter()
                            .filter(|s| !reply.unknown_sessions.contains(&s.session_id))
                            .map(|s| s.user_id.clone())
                            .collect();
                        (reply.delivered as usize, reached)
                    }
                    Err(status) => {
                        tracing::warn!(%edge, %addr, %status, "deliver failed");
                        (0, Vec::new())
                    }
                }
            }
        });
        let mut writes = 0;
        let mut reached = std::collections::HashSet::new();
        for (n, users) in futures::future::join_all(calls).await {
            writes += n;
            reached.extend(users);
        }
        Pushed {
            writes,
            sessionless: users.into_iter().filter(|u| !reached.contains(u)).collect(),
        }
    }
}
