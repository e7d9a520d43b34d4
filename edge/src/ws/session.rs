//! One WebSocket connection from upgrade to close.
//!
//! A single task owns the socket: it selects over the next client frame,
//! the command being handled, the next pushed frame, a ping timer, the
//! token's expiry and the close signals. It reads frames as they arrive
//! into the connection's [`Intake`], which refuses at once what it will not
//! queue, and handles them one at a time, in order, so a client's acks
//! arrive in the order it sent. Pushed frames wait in the bounded outbox
//! while a command runs (so the ack of a send reaches the sender before the
//! echo of its message) and are written between commands.
//!
//! Every write has a deadline, so a client that stops reading cannot pin
//! the task; a client that stops answering pings is dropped. Behind a proxy
//! the proxy and the kernel buffer what a slow client does not read, so the
//! socket never pushes back: after writing, the task sends a probe ping at
//! most every [`PROBE_EVERY`], and a probe unanswered for [`SLOW_LIMIT`] (the
//! client has not read what was written before it) closes the connection
//! with 4008.

use super::close;
use super::commands::{Connection, Handled};
use super::intake::Intake;
use crate::sessions::SessionHandle;
use crate::state::EdgeState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use parley::ApiError;
use parley::ids::new_session_id;
use parley::proto::{
    CloseSessionRequest, OpenSessionRequest, SessionRef, User, VerifyTokenRequest,
};
use parley::protocol::{ClientFrame, decode, server};
use parley::time::now_ms;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout};
use tracing::Instrument;

/// Longest a single write may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The edge pings every connection this often…
const PING_EVERY: Duration = Duration::from_secs(30);
/// …and drops one it has heard nothing from (not even a pong) this long.
const IDLE_LIMIT: Duration = Duration::from_secs(75);
/// After a write, a probe ping goes out if none went out for this long…
const PROBE_EVERY: Duration = Duration::from_secs(3);
/// …and a probe unanswered this long means the client is not reading:
/// closed with 4008, well within 15 s of it stopping.
const SLOW_LIMIT: Duration = Duration::from_secs(10);

pub async fn run(socket: WebSocket, state: EdgeState) {
    let session_id = new_session_id();
    let span = tracing::info_span!("ws", session = %session_id, user = tracing::field::Empty);
    async move {
        let mut socket = socket;
        let Some(joined) = join(&mut socket, &state).await else {
            return;
        };
        tracing::Span::current().record("user", joined.user.id.as_str());
        serve_joined(socket, state, session_id, joined).await;
    }
    .instrument(span)
    .await
}

/// Writes one message within [`WRITE_TIMEOUT`]; false when the client is
/// gone or too slow to take it.
async fn write(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        timeout(WRITE_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

async fn send_close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    write(socket, Message::Close(Some(frame))).await;
}

/// A `join` whose token checked out.
struct Joined {
    user: User,
    /// When the token expires (ms since the epoch).
    expires_at_ms: i64,
    /// The `join` frame's `ref`, for an error that refuses the session.
    reference: Option<String>,
}

/// Waits for `join` and checks its token. Anything else first, nothing in
/// time, or a bad token closes the socket with 4001. Answers the user and
/// when their token expires.
async fn join(socket: &mut WebSocket, state: &EdgeState) -> Option<Joined> {
    let deadline = Instant::now() + state.config.join_timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.recv()).await;
        let text = match next {
            Err(_) => {
                send_close(socket, close::NOT_JOINED, "join timeout").await;
                return None;
            }
            Ok(Some(Err(e))) => {
                if is_capacity(&e) {
                    send_close(socket, close::TOO_BIG, "frame too large").await;
                }
                return None;
            }
            Ok(None | Some(Ok(Message::Close(_)))) => return None,
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
                    let r = r.into_inner();
                    r.user
                        .map(|u| (u, r.expires_at_ms))
                        .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))
                }),
            Err(e) => Err(e),
        };
        return match verified {
            Ok((user, expires_at_ms)) => Some(Joined {
                user,
                expires_at_ms,
                reference,
            }),
            Err(e) => {
                let frame = server::error(reference.as_deref(), &e);
                write(socket, Message::Text(frame.into())).await;
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

/// How the main loop ended.
enum Ending {
    /// The client closed, or the server closed it on purpose.
    Clean,
    /// The connection dropped, timed out, or broke the protocol.
    Dropped,
}

async fn serve_joined(mut socket: WebSocket, state: EdgeState, session_id: String, joined: Joined) {
    let Joined {
        user,
        expires_at_ms,
        reference,
    } = joined;
    let (outbox, mut inbox) = mpsc::channel::<Utf8Bytes>(crate::sessions::OUTBOX);
    let kick = Arc::new(Notify::new());
    state.sessions.insert(
        session_id.clone(),
        SessionHandle {
            user_id: user.id.clone(),
            outbox,
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
        // The user is at the session cap (counted over every edge in the
        // registry); presence-svc already took this session back out.
        Err(e) if e.code == parley::ErrorCode::RateLimited => {
            state.sessions.remove(&session_id);
            let frame = server::error(reference.as_deref(), &e);
            write(&mut socket, Message::Text(frame.into())).await;
            send_close(&mut socket, close::TOO_MANY_SESSIONS, "too many sessions").await;
            tracing::debug!("refused: too many sessions");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "presence unavailable at join");
            Vec::new()
        }
    };
    let greeting = server::connected(&user, &session_id, &state.config.node_id);
    let mut ok = write(&mut socket, Message::Text(greeting.into())).await;
    for p in online {
        if !ok {
            break;
        }
        let frame = server::user_joined(&p.user_id, &p.status);
        ok = write(&mut socket, Message::Text(frame.into())).await;
    }
    tracing::debug!("joined");

    let ending = if ok {
        let expires_in = u64::try_from(expires_at_ms.saturating_sub(now_ms())).unwrap_or(0);
        let expiry = Instant::now() + Duration::from_millis(expires_in);
        let connection = Connection::new(state.clone(), user);
        serve_frames(&mut socket, &state, connection, &mut inbox, &kick, expiry).await
    } else {
        Ending::Dropped
    };
    state.sessions.remove(&session_id);
    let clean = matches!(ending, Ending::Clean);
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

/// The command being handled: it owns the connection while it runs and
/// gives it back with its answer.
type Handling = Pin<Box<dyn Future<Output = (Box<Connection>, Handled)> + Send>>;

/// Who holds the connection: the loop, between commands, or the command
/// being handled, which gives it back when it finishes.
enum Turn {
    /// Boxed, as it moves in and out of every command's future.
    Idle(Box<Connection>),
    Busy(Handling),
}

fn start(mut connection: Box<Connection>, text: Utf8Bytes, late: bool) -> Handling {
    Box::pin(async move {
        let handled = connection.handle(text.as_str(), late).await;
        (connection, handled)
    })
}

/// Waits for the command being handled, or forever when there is none.
async fn finished(turn: &mut Turn) -> (Box<Connection>, Handled) {
    match turn {
        Turn::Busy(future) => future.await,
        Turn::Idle(_) => std::future::pending().await,
    }
}

/// The probe pings of one connection (see the module docs).
struct Probe {
    /// The payload and send time of the probe not answered yet.
    outstanding: Option<(u64, Instant)>,
    last_sent: Instant,
    next: u64,
}

impl Probe {
    fn new() -> Self {
        Self {
            outstanding: None,
            last_sent: Instant::now(),
            next: 0,
        }
    }

    /// The probe to send after a write, if one is due.
    fn due(&mut self) -> Option<Message> {
        if self.outstanding.is_some() || self.last_sent.elapsed() < PROBE_EVERY {
            return None;
        }
        self.next += 1;
        let now = Instant::now();
        self.outstanding = Some((self.next, now));
        self.last_sent = now;
        Some(Message::Ping(self.next.to_be_bytes().to_vec().into()))
    }

    /// When the outstanding probe makes the client too slow.
    fn deadline(&self) -> Option<Instant> {
        self.outstanding.map(|(_, sent)| sent + SLOW_LIMIT)
    }

    fn answered(&mut self, payload: &[u8]) {
        if self
            .outstanding
            .is_some_and(|(id, _)| payload == id.to_be_bytes().as_slice())
        {
            self.outstanding = None;
        }
    }
}

/// Writes `frames`, then a probe if one is due; false when the client is
/// gone or too slow to take them.
async fn write_all(
    socket: &mut WebSocket,
    probe: &mut Probe,
    frames: impl IntoIterator<Item = Utf8Bytes>,
) -> bool {
    for frame in frames {
        if !write(socket, Message::Text(frame)).await {
            return false;
        }
    }
    match probe.due() {
        Some(ping) => write(socket, ping).await,
        None => true,
    }
}

async fn serve_frames(
    socket: &mut WebSocket,
    state: &EdgeState,
    connection: Connection,
    inbox: &mut mpsc::Receiver<Utf8Bytes>,
    kick: &Notify,
    expiry: Instant,
) -> Ending {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    let mut probe = Probe::new();
    let mut intake = Intake::new(state.config.frames_per_second, state.config.max_frame_wait);
    let mut turn = Turn::Idle(Box::new(connection));
    loop {
        if let Turn::Idle(_) = turn {
            // Pushes that queued while the last command ran go out before
            // the next command starts.
            let mut pushed = Vec::new();
            while let Ok(frame) = inbox.try_recv() {
                pushed.push(frame);
            }
            if !pushed.is_empty() && !write_all(socket, &mut probe, pushed).await {
                return Ending::Dropped;
            }
            turn = match turn {
                Turn::Idle(connection) => match intake.pop() {
                    Some(next) => Turn::Busy(start(connection, next.text, next.late)),
                    None => Turn::Idle(connection),
                },
                busy => busy,
            };
        }
        let slow_at = probe.deadline();
        tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                send_close(socket, close::GOING_AWAY, "server going away").await;
                // The client is told to reconnect elsewhere: counted as a
                // drop, so a rolling restart does not flap its presence.
                return Ending::Dropped;
            }
            () = kick.notified() => {
                send_close(socket, close::TOO_SLOW, "too slow, reconnect and sync").await;
                return Ending::Dropped;
            }
            () = sleep_until_some(slow_at) => {
                metrics::counter!("parley_edge_slow_consumers_closed_total").increment(1);
                tracing::debug!("closed: probe unanswered");
                send_close(socket, close::TOO_SLOW, "too slow, reconnect and sync").await;
                return Ending::Dropped;
            }
            () = tokio::time::sleep_until(expiry) => {
                let err = ApiError::unauthorized("token expired");
                write(socket, Message::Text(server::error(None, &err).into())).await;
                send_close(socket, close::NOT_JOINED, "token expired").await;
                return Ending::Clean;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_LIMIT
                    || !write(socket, Message::Ping(Default::default())).await
                {
                    return Ending::Dropped;
                }
            }
            (connection, handled) = finished(&mut turn) => {
                turn = Turn::Idle(connection);
                intake.handled(handled.shed);
                if !write_all(socket, &mut probe, handled.frames.into_iter().map(Utf8Bytes::from)).await {
                    return Ending::Dropped;
                }
            }
            pushed = inbox.recv(), if matches!(turn, Turn::Idle(_)) => match pushed {
                Some(frame) => {
                    if !write_all(socket, &mut probe, [frame]).await {
                        return Ending::Dropped;
                    }
                }
                None => return Ending::Dropped,
            },
            incoming = socket.recv() => {
                if matches!(incoming, Some(Ok(_))) {
                    last_heard = Instant::now();
                }
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(refusal) = intake.offer(text)
                            && !write(socket, Message::Text(refusal)).await
                        {
                            return Ending::Dropped;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let err = ApiError::invalid("binary frames are not supported");
                        if !write(socket, Message::Text(server::error(None, &err).into())).await {
                            return Ending::Dropped;
                        }
                    }
                    Some(Ok(Message::Pong(payload))) => probe.answered(&payload),
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        finish_close(socket).await;
                        return Ending::Clean;
                    }
                    Some(Err(e)) => {
                        if is_capacity(&e) {
                            send_close(socket, close::TOO_BIG, "frame too large").await;
                        }
                        return Ending::Dropped;
                    }
                    None => return Ending::Dropped,
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The close reply tungstenite queued is written on the next socket call:
/// keep reading briefly so the client sees a clean close, not 1006.
async fn finish_close(socket: &mut WebSocket) {
    let _ = timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// Whether a read failed because a frame or message passed the
/// transport's size limits (tungstenite's `Capacity` error, which axum's
/// error wraps), by type rather than by the message's text.
fn is_capacity(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| matches!(inner, Error::Capacity(_)))
}
