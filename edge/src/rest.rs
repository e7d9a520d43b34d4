//! REST: auth, conversations, history, user search, health and the service
//! list. JSON bodies are parsed by hand so any malformed body is a 400 with
//! the protocol's `invalid` code, never a framework default.

use crate::http_error::HttpError;
use crate::state::EdgeState;
use crate::{telemetry, web, ws};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use parley::discovery::kind;
use parley::proto::{
    GetPresenceRequest, GetUsersRequest, HistoryRequest, ListConversationsRequest, LoginRequest,
    RegisterRequest, SearchMessagesRequest, SearchUsersRequest, User, VerifyTokenRequest,
};
use parley::protocol::{QueryLimit, message_json, user_json};
use parley::{ApiError, ErrorCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// REST bodies are small; anything larger is refused before parsing.
const MAX_BODY: usize = 16 * 1024;

pub fn router(state: EdgeState) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/style.css", get(web::style))
        .route("/favicon.ico", get(web::favicon))
        .route("/ws", get(ws::upgrade))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(telemetry::metrics))
        .route("/api/services", get(services))
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/users", get(users))
        .route("/api/conversations", get(conversations))
        .route("/api/conversations/{id}/messages", get(messages))
        .route("/api/search", get(search))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(web::security_headers())
        .with_state(state)
}

/// The body as JSON of `T`; an oversized body is `too_large` (413), any
/// other problem `invalid` (400), both with the protocol's JSON error.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, HttpError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::TooLarge, "request body too large")
        } else {
            ApiError::invalid(rejection.body_text())
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| HttpError(ApiError::invalid(format!("invalid request body: {e}"))))
}

/// The caller of an authenticated REST route, from `Authorization: Bearer`.
#[derive(Debug, Clone)]
pub struct Caller(pub User);

impl FromRequestParts<EdgeState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &EdgeState) -> Result<Self, HttpError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let reply = state
            .auth()
            .await?
            .verify_token(VerifyTokenRequest {
                token: token.to_owned(),
            })
            .await?
            .into_inner();
        let user = reply
            .user
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
        Ok(Caller(user))
    }
}

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    email: String,
    password: String,
    #[serde(default, rename = "displayName", alias = "display_name")]
    display_name: String,
}

async fn register(
    State(state): State<EdgeState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let b: RegisterBody = parse_body(body)?;
    let reply = state
        .auth()
        .await?
        .register(RegisterRequest {
            username: b.username,
            email: b.email,
            password: b.password,
            display_name: b.display_name,
        })
        .await?
        .into_inner();
    let user = reply.user.as_ref().map(user_json).unwrap_or(Value::Null);
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": reply.token, "user": user})),
    ))
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    State(state): State<EdgeState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let b: LoginBody = parse_body(body)?;
    let reply = state
        .auth()
        .await?
        .login(LoginRequest {
            email: b.email,
            password: b.password,
        })
        .await?
        .into_inner();
    let user = reply.user.as_ref().map(user_json).unwrap_or(Value::Null);
    Ok(Json(json!({"token": reply.token, "user": user})))
}

#[derive(Deserialize)]
struct UsersQuery {
    #[serde(default)]
    q: String,
}

async fn users(
    State(state): State<EdgeState>,
    _caller: Caller,
    query: Result<Query<UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let found = state
        .auth()
        .await?
        .search_users(SearchUsersRequest {
            query: query.q,
            limit: 50,
        })
        .await?
        .into_inner()
        .users;
    let ids: Vec<String> = found.iter().map(|u| u.id.clone()).collect();
    let presence: HashMap<String, (String, i64)> = state
        .presence()
        .await?
        .get_presence(GetPresenceRequest { user_ids: ids })
        .await?
        .into_inner()
        .presences
        .into_iter()
        .map(|p| (p.user_id, (p.status, p.last_seen_ms)))
        .collect();
    let users: Vec<Value> = found
        .iter()
        .map(|u| {
            let (status, last_seen) = presence
                .get(&u.id)
                .cloned()
                .unwrap_or_else(|| ("offline".into(), 0));
            let mut v = user_json(u);
            v["status"] = json!(status);
            v["last_seen"] = json!(last_seen);
            v
        })
        .collect();
    Ok(Json(json!({"users": users})))
}

async fn conversations(
    State(state): State<EdgeState>,
    Caller(me): Caller,
) -> Result<impl IntoResponse, HttpError> {
    let summaries = state
        .chat()
        .await?
        .list_conversations(ListConversationsRequest {
            user_id: me.id.clone(),
        })
        .await?
        .into_inner()
        .conversations;
    let mut member_ids: Vec<String> = summaries
        .iter()
        .flat_map(|s| {
            s.conversation
                .iter()
                .flat_map(|c| c.members.iter().cloned())
        })
        .collect();
    member_ids.sort();
    member_ids.dedup();
    let users: HashMap<String, User> = state
        .auth()
        .await?
        .get_users(GetUsersRequest { ids: member_ids })
        .await?
        .into_inner()
        .users
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    let list: Vec<Value> = summaries
        .into_iter()
        .filter_map(|s| {
            let c = s.conversation?;
            let members: Vec<Value> = c
                .members
                .iter()
                .map(|id| users.get(id).map(user_json).unwrap_or_else(|| json!({"id": id})))
                .collect();
            let cursors: Vec<Value> = c
                .cursors
                .iter()
                .map(|k| json!({"user_id": k.user_id, "delivered_seq": k.delivered_seq, "read_seq": k.read_seq}))
                .collect();
            Some(json!({
                "id": c.id,
                "kind": c.kind,
                "name": c.name,
                "members": members,
                "last_seq": c.last_seq,
                "unread": s.unread,
                "last_message": s.last_message.as_ref().map(message_json),
                "cursors": cursors,
            }))
        })
        .collect();
    Ok(Json(json!({"conversations": list})))
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    limit: Option<QueryLimit>,
}

/// `GET /api/search?q=&limit=`: messages of the caller's conversations
/// containing `q`, newest first.
async fn search(
    State(state): State<EdgeState>,
    Caller(me): Caller,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Query(search) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let reply = state
        .chat()
        .await?
        .search_messages(SearchMessagesRequest {
            user_id: me.id,
            query: search.q,
            limit: search.limit.unwrap_or_default().0,
        })
        .await?
        .into_inner();
    let messages: Vec<Value> = reply.messages.iter().map(message_json).collect();
    Ok(Json(json!({"messages": messages})))
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    before_seq: Option<u64>,
    #[serde(default)]
    limit: Option<QueryLimit>,
}

async fn messages(
    State(state): State<EdgeState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, HttpError> {
    let Query(page) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let reply = state
        .chat()
        .await?
        .history(HistoryRequest {
            user_id: me.id,
            conversation_id: id,
            before_seq: page.before_seq.unwrap_or(0),
            limit: page.limit.unwrap_or_default().0,
        })
        .await?
        .into_inner();
    let messages: Vec<Value> = reply.messages.iter().map(message_json).collect();
    Ok(Json(
        json!({"messages": messages, "has_more": reply.has_more}),
    ))
}

async fn health(State(state): State<EdgeState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "service": "edge",
        "node": state.config.node_id,
        "connections": state.sessions.len(),
    }))
}

/// Ready when one instance of every service this edge calls reports
/// SERVING over gRPC health (which follows their backends).
async fn ready(State(state): State<EdgeState>) -> impl IntoResponse {
    let mut checks = BTreeMap::new();
    let mut all = true;
    for k in [kind::AUTH, kind::CHAT, kind::PRESENCE] {
        let serving = match state.discovery.channel(k).await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
                .unwrap_or(false),
            Err(_) => false,
        };
        all &= serving;
        checks.insert(k, if serving { "serving" } else { "not_serving" });
    }
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": all, "node": state.config.node_id, "services": checks})),
    )
}

/// Live instances by kind, as registered (an entry exists only while its
/// instance heartbeats), each with what its gRPC health check answers now:
/// `serving`, `not_serving` (up, but its backends are not) or `unreachable`.
/// `load` is what the instance last reported: open sockets for an edge,
/// gRPC requests in flight for a service.
async fn services(State(state): State<EdgeState>) -> Result<impl IntoResponse, HttpError> {
    let list = state
        .discovery
        .registry()
        .services(None)
        .await
        .map_err(ApiError::from)?;
    let checks = list.iter().map(|s| instance_health(&state, &s.grpc_addr));
    let health = futures::future::join_all(checks).await;
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (s, health) in list.into_iter().zip(health) {
        by_kind.entry(s.kind.clone()).or_default().push(json!({
            "id": s.id,
            "grpc_addr": s.grpc_addr,
            "http_addr": s.http_addr,
            "started_at": s.started_at_ms,
            "load": s.load,
            "health": health,
        }));
    }
    Ok(Json(
        json!({"node": state.config.node_id, "services": by_kind}),
    ))
}

/// One instance's gRPC health, asked with a short deadline so that one
/// stuck instance does not hold up the listing.
async fn instance_health(state: &EdgeState, addr: &str) -> &'static str {
    let Ok(channel) = state.discovery.channel_at(addr) else {
        return "unreachable";
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(std::time::Duration::from_secs(1), check).await {
        Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32 => "serving",
        Ok(Ok(_)) => "not_serving",
        _ => "unreachable",
    }
}
