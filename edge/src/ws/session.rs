//! One WebSocket connection from upgrade to close.
//!
//! A single task owns the socket: it selects over the next client frame,
//! the next pushed frame and the close signals. Commands are handled one at
//! a time, in order, so a client's acks arrive in the order it sent; pushed
//! frames wait in the bounded outbox meanwhile.

use super::close;
use super::commands::Connection;
use crate::sessions::SessionHandle;
use crate::state::EdgeState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use parley::ApiError;
use parley::ids::new_session_id;
use parley::proto::{
    CloseSessionRequest, OpenSessionRequest, SessionRef, User, VerifyTokenRequest,
};
use parley::protocol::{ClientFrame, decode, server};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

pub async fn run(socket: WebSocket, state: EdgeState) {
    let session_id = new_session_id();
    let span = tracing::info_span!("ws", session = %session_id, user = tracing::field::Empty);
    async move {
        let mut socket = socket;
        let Some(user) = join(&mut socket, &state).await else {
            return;
        };
        tracing::Span::current().record("user", user.id.as_str());
        serve_joined(socket, state, session_id, user).await;
    }
    .instrument(span)
    .await
}

async fn send_close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

/// Waits for `join` and checks its token. Anything else first, nothing in
/// time, or a bad token closes the socket with 4001.
async fn join(socket: &mut WebSocket, state: &EdgeState) -> Option<User> {
    let deadline = tokio::time::Instant::now() + state.config.join_timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.recv()).await;
        let text = match next {
            Err(_) => {
                send_close(socket, close::NOT_JOINED, "join timeout").await;
                return None;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                send_close(socket, close::NOT_JOINED, "join first").await;
                return None;
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
        };
        let (reference, token) = match decode(text.as_str()) {
            Ok(env) => match env.frame {
                ClientFrame::Join { token } => (env.reference, token),
                _ => {
                    send_close(socket, close::NOT_JOINED, "join first").await;
                    return None;
                }
            },
            Err(_) => {
                send_close(socket, close::NOT_JOINED, "join first").await;
                return None;
            }
        };
        let verified = match state.auth().await {
            Ok(mut auth) => auth
                .verify_token(VerifyTokenRequest { token })
                .await
                .map_err(ApiError::from)
                .and_then(|r| {
                    r.into_inner()
                        .user
                        .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))
                }),
            Err(e) => Err(e),
        };
        return match verified {
            Ok(user) => Some(user),
            Err(e) => {
                let _ = socket
                    .send(Message::Text(
                        server::error(reference.as_deref(), &e).into(),
                    ))
                    .await;
                let reason = if e.code == parley::ErrorCode::Unauthorized {
                    "unauthorized"
                } else {
                    "join failed"
                };
                send_close(socket, close::NOT_JOINED, reason).await;
                None
            }
        };
    }
}

async fn serve_joined(mut socket: WebSocket, state: EdgeState, session_id: String, user: User) {
    let (outbox, mut inbox) = mpsc::channel::<Utf8Bytes>(crate::sessions::OUTBOX);
    let kick = Arc::new(Notify::new());
    state.sessions.insert(
        session_id.clone(),
        SessionHandle {
            user_id: user.id.clone(),
            outbox: outbox.clone(),
            kick: kick.clone(),
        },
    );
    let session_ref = SessionRef {
        session_id: session_id.clone(),
        user_id: user.id.clone(),
        edge_id: state.config.node_id.clone(),
    };
    let online = match state.presence().await {
        Ok(mut p) => p
            .open_session(OpenSessionRequest {
                session: Some(session_ref.clone()),
            })
            .await
            .map(|r| r.into_inner().online_contacts)
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let online = match online {
        Ok(online) => online,
        Err(e) => {
            tracing::warn!(error = %e, "presence unavailable at join");
            Vec::new()
        }
    };
    let greeting = server::connected(&user, &session_id, &state.config.node_id);
    let mut ok = socket.send(Message::Text(greeting.into())).await.is_ok();
    for p in online {
        if !ok {
            break;
        }
        let frame = server::user_joined(&p.user_id, &p.status);
        ok = socket.send(Message::Text(frame.into())).await.is_ok();
    }
    tracing::debug!("joined");

    let mut connection = Connection::new(state.clone(), user);
    drop(outbox);
    let shutdown = state.shutdown.clone();
    let mut clean = false;
    while ok {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                send_close(&mut socket, close::GOING_AWAY, "server going away").await;
                clean = true;
                break;
            }
            () = kick.notified() => {
                send_close(&mut socket, close::TOO_SLOW, "too slow, reconnect and sync").await;
                break;
            }
            pushed = inbox.recv() => match pushed {
                Some(frame) => ok = socket.send(Message::Text(frame)).await.is_ok(),
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    for frame in connection.handle(text.as_str()).await {
                        if socket.send(Message::Text(frame.into())).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let err = ApiError::invalid("binary frames are not supported");
                    ok = socket.send(Message::Text(server::error(None, &err).into())).await.is_ok();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) => {
                    clean = true;
                    break;
                }
                Some(Err(e)) => {
                    if is_capacity(&e) {
                        send_close(&mut socket, close::TOO_BIG, "frame too large").await;
                    }
                    break;
                }
                None => break,
            },
        }
    }
    state.sessions.remove(&session_id);
    let closed = match state.presence().await {
        Ok(mut p) => p
            .close_session(CloseSessionRequest {
                session: Some(session_ref),
                clean,
            })
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = closed {
        tracing::warn!(error = %e, "cannot report session close");
    }
    tracing::debug!(clean, "closed");
}

fn is_capacity(e: &axum::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("message too long") || text.contains("too big") || text.contains("capacity")
}
