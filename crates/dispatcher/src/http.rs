//! The reference's HTTP RPC surface (reference §3.2–3.4): `POST` on any
//! path with `Rpc-Procedure: {namespace}::{procedure}`, JSON bodies of the
//! reference's shapes, errors in `Rpc-Status`, `Rpc-Error-Code` and
//! `Rpc-Error-Message` with a non-2xx status.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use omnirelay_resourcelease::json::{self, RpcRequest, RpcResponse};

use crate::queue::{ErrorStatus, QueueError, codes};
use crate::service::{DispatchError, Dispatcher};

/// Request and response headers of the reference's HTTP transport.
pub mod headers {
    /// The procedure, `{namespace}::{name}`.
    pub const PROCEDURE: &str = "rpc-procedure";
    /// The calling service (a peer id source).
    pub const CALLER: &str = "rpc-caller";
    /// A principal bound by middleware (a peer id source).
    pub const PRINCIPAL: &str = "rpc.principal";
    /// A peer id source of last resort.
    pub const PEER_ID: &str = "x-peer-id";
    /// A time limit for the call, in milliseconds (bounds `lease`'s wait).
    pub const TTL_MS: &str = "rpc-ttl-ms";
    /// The error's status name (`InvalidArgument`, …).
    pub const STATUS: &str = "rpc-status";
    /// The error's code (`error.taskqueue.lease_inactive`, …).
    pub const ERROR_CODE: &str = "rpc-error-code";
    /// The error's message.
    pub const ERROR_MESSAGE: &str = "rpc-error-message";
    /// The transport that answered (`http`).
    pub const TRANSPORT: &str = "rpc-transport";
}

/// The procedures.
const PROCEDURES: [&str; 7] = [
    "enqueue",
    "lease",
    "complete",
    "heartbeat",
    "fail",
    "drain",
    "restore",
];

/// An RPC error: the reference's status, its HTTP code, and the error code.
struct RpcError {
    status: &'static str,
    http: StatusCode,
    code: Option<String>,
    message: String,
}

impl RpcError {
    fn new(
        status: &'static str,
        http: StatusCode,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            http,
            code: code.map(str::to_owned),
            message: message.into(),
        }
    }

    fn invalid(code: Option<&str>, message: impl Into<String>) -> Self {
        Self::new("InvalidArgument", StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<QueueError> for RpcError {
    fn from(error: QueueError) -> Self {
        let (status, http) = match error.status {
            ErrorStatus::InvalidArgument => ("InvalidArgument", StatusCode::BAD_REQUEST),
            ErrorStatus::NotFound => ("NotFound", StatusCode::NOT_FOUND),
            ErrorStatus::FailedPrecondition => {
                ("FailedPrecondition", StatusCode::PRECONDITION_FAILED)
            }
            ErrorStatus::ResourceExhausted => ("ResourceExhausted", StatusCode::TOO_MANY_REQUESTS),
        };
        Self::new(status, http, Some(error.code), error.message)
    }
}

impl From<DispatchError> for RpcError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Queue(error) => error.into(),
            DispatchError::Unavailable(why) => Self::new(
                "Unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!("replication is unavailable: {why}"),
            ),
            DispatchError::Stopping => Self::new(
                "Unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "the dispatcher is shutting down".to_owned(),
            ),
        }
    }
}

/// `InvalidArgument` → `INVALID_ARGUMENT`, as the reference's error body.
fn upper_snake(status: &str) -> String {
    let mut out = String::with_capacity(status.len() + 4);
    for (i, c) in status.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A header value, or a placeholder for text a header cannot carry.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| {
        HeaderValue::from_str(&text.escape_default().to_string())
            .unwrap_or(HeaderValue::from_static("(unprintable)"))
    })
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let body = json::encode_rpc_error(
            &self.message,
            &upper_snake(self.status),
            self.code.as_deref(),
        );
        let mut response = (self.http, Body::from(body)).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(headers::TRANSPORT, HeaderValue::from_static("http"));
        h.insert(headers::STATUS, HeaderValue::from_static(self.status));
        h.insert(headers::ERROR_MESSAGE, header_value(&self.message));
        if let Some(code) = &self.code {
            h.insert(headers::ERROR_CODE, header_value(code));
        }
        response
    }
}

fn ok(body: &RpcResponse<'_>) -> Response {
    json_response(json::encode_rpc_response(body))
}

fn json_response(body: Vec<u8>) -> Response {
    let mut response = Body::from(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(headers::TRANSPORT, HeaderValue::from_static("http"));
    response
}

/// The first non-blank peer id: `explicit` (lease's `peerId`), then the
/// `Rpc-Caller`, `rpc.principal` and `x-peer-id` headers (reference §3.4).
/// A header value is read as UTF-8 (what clients send for a name such as
/// `wörker-1`), not only ASCII.
///
/// # Errors
///
/// A peer header that is not UTF-8: the message names it. Skipping it
/// would lease or record under another peer, or none, without a word.
pub fn resolve_peer(explicit: Option<&str>, headers: &HeaderMap) -> Result<Option<String>, String> {
    if let Some(peer) = explicit.map(str::trim).filter(|peer| !peer.is_empty()) {
        return Ok(Some(peer.to_owned()));
    }
    let sources = [
        (headers::CALLER, "Rpc-Caller"),
        (headers::PRINCIPAL, "rpc.principal"),
        (headers::PEER_ID, "x-peer-id"),
    ];
    for (name, shown) in sources {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let text = std::str::from_utf8(value.as_bytes())
            .map_err(|_| format!("the {shown} header is not UTF-8 text"))?;
        let peer = text.trim();
        if !peer.is_empty() {
            return Ok(Some(peer.to_owned()));
        }
    }
    Ok(None)
}

/// [`resolve_peer`], its refusal as the RPC's `InvalidArgument`.
fn peer_of(explicit: Option<&str>, headers: &HeaderMap) -> Result<Option<String>, RpcError> {
    resolve_peer(explicit, headers).map_err(|message| RpcError::invalid(None, message))
}

/// Where a dispatcher lists its dead-lettered items (`GET`).
pub const DEAD_LETTERS_PATH: &str = "/queue/dead-letters";
/// Where a dispatcher takes a redrive of dead-lettered items (`POST`).
pub const REDRIVE_PATH: &str = "/queue/dead-letters/redrive";
/// Where a dispatcher takes a purge of dead-lettered items (`POST`).
pub const PURGE_PATH: &str = "/queue/dead-letters/purge";

/// The dispatcher's router: the RPC (`POST` on every path but the three
/// below), `GET` [`DEAD_LETTERS_PATH`], `POST` [`REDRIVE_PATH`] and `POST`
/// [`PURGE_PATH`].
pub fn router(dispatcher: Arc<Dispatcher>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            DEAD_LETTERS_PATH,
            get(
                |State(dispatcher): State<Arc<Dispatcher>>, RawQuery(query): RawQuery| async move {
                    match page_of(query.as_deref()) {
                        Ok((offset, limit)) => {
                            let (page, total) = dispatcher.dead_letters_page(offset, limit).await;
                            dead_letters_response(&page, total)
                        }
                        Err(error) => error.into_response(),
                    }
                },
            ),
        )
        .route(REDRIVE_PATH, change_route(DeadLetterChange::Redrive))
        .route(PURGE_PATH, change_route(DeadLetterChange::Purge))
        .fallback(handle)
        .with_state(dispatcher)
}

/// The page a dead-letter listing asks for: `?offset=N&limit=M`, both
/// optional (from the first, all of them).
fn page_of(query: Option<&str>) -> Result<(usize, Option<usize>), RpcError> {
    let (mut offset, mut limit) = (0, None);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<usize>().map_err(|_| {
                RpcError::invalid(
                    None,
                    format!("{name} must be a whole number of items, not {value:?}"),
                )
            })
        };
        match name {
            "offset" => offset = number()?,
            "limit" => limit = Some(number()?),
            _ => {
                return Err(RpcError::invalid(
                    None,
                    format!("unknown parameter {name:?}: a listing takes offset and limit"),
                ));
            }
        }
    }
    Ok((offset, limit))
}

/// `{"deadLetters":[…],"total":N}` of `letters`, a page of `total`.
fn dead_letters_response(letters: &[crate::DeadLetter], total: usize) -> Response {
    let letters: Vec<_> = letters
        .iter()
        .map(|d| json::DeadLetterView {
            item: &d.item,
            error: d.error.as_ref(),
            at: d.at,
        })
        .collect();
    json_response(json::encode_dead_letters(&letters, total))
}

/// The body of a redrive or a purge: `{"sequenceIds":[…]}` or
/// `{"all":true}`, with the operator's `peerId` if given (else the
/// headers name the peer, as for the RPC).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectionRequest {
    #[serde(default)]
    sequence_ids: Option<Vec<i64>>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    peer_id: Option<String>,
}

/// What an operator does to dead-lettered items.
#[derive(Clone, Copy)]
enum DeadLetterChange {
    Redrive,
    Purge,
}

impl DeadLetterChange {
    const fn verb(self) -> &'static str {
        match self {
            Self::Redrive => "redrive",
            Self::Purge => "purge",
        }
    }
}

/// `POST` of `change` to the dead letters.
fn change_route(change: DeadLetterChange) -> axum::routing::MethodRouter<Arc<Dispatcher>> {
    axum::routing::post(
        move |State(dispatcher): State<Arc<Dispatcher>>, headers: HeaderMap, body: Bytes| async move {
            change_dead_letters(&dispatcher, change, &headers, &body).await
        },
    )
}

/// `POST` [`REDRIVE_PATH`] (the named dead-lettered items, or all, back
/// in the queue) or [`PURGE_PATH`] (discarded); answers `{"items":[…]}`,
/// the items redriven as they now stand or those purged, once their
/// events are durable. The caller's peer id (the body's `peerId`, else
/// resolved from the headers as for the RPC) is the events' peer.
async fn change_dead_letters(
    dispatcher: &Dispatcher,
    change: DeadLetterChange,
    request_headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let verb = change.verb();
    let (which, peer_id) = match serde_json::from_slice::<SelectionRequest>(body) {
        Ok(SelectionRequest {
            sequence_ids: Some(ids),
            all: false,
            peer_id,
        }) if !ids.is_empty() => (crate::queue::Selection::Items(ids), peer_id),
        Ok(SelectionRequest {
            sequence_ids: None,
            all: true,
            peer_id,
        }) => (crate::queue::Selection::All, peer_id),
        Ok(_) => {
            return RpcError::invalid(
                None,
                format!(
                    "name the items to {verb}: {{\"sequenceIds\":[…]}} (not empty) or {{\"all\":true}}, not both"
                ),
            )
            .into_response();
        }
        Err(error) => {
            return RpcError::invalid(None, format!("the {verb} request is not valid: {error}"))
                .into_response();
        }
    };
    let peer = match peer_of(peer_id.as_deref(), request_headers) {
        Ok(peer) => peer,
        Err(error) => return error.into_response(),
    };
    let outcome = match change {
        DeadLetterChange::Redrive => dispatcher.redrive(&which, peer.as_deref()).await,
        DeadLetterChange::Purge => dispatcher.purge(&which, peer.as_deref()).await,
    };
    match outcome {
        Ok(items) => ok(&RpcResponse::Drained(&items)),
        Err(error) => RpcError::from(error).into_response(),
    }
}

/// The largest request body read (a restore of many items is the largest
/// request); a larger one is refused.
pub const MAX_BODY_BYTES: usize = 16 << 20;

async fn handle(
    State(dispatcher): State<Arc<Dispatcher>>,
    method: Method,
    uri: axum::http::Uri,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    // `omnirelay promote` pointed at the primary instead of its standby:
    // say so rather than answer that the RPC header is missing.
    if uri.path() == PROMOTE_PATH && !request_headers.contains_key(headers::PROCEDURE) {
        return (
            StatusCode::CONFLICT,
            "this node is a dispatcher, not a standby: there is nothing to promote (promote the standby that follows it)\n",
        )
            .into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an RPC with an Rpc-Procedure header\n",
        )
            .into_response();
    }
    let declared = request_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return RpcError::new(
            "InvalidArgument",
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("the request body is over {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            let (http, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is over {MAX_BODY_BYTES} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {error}"),
                )
            };
            return RpcError::new("InvalidArgument", http, None, message).into_response();
        }
    };
    match call(&dispatcher, &request_headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn call(
    dispatcher: &Dispatcher,
    request_headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, RpcError> {
    let namespace = &dispatcher.options().namespace;
    let procedure = request_headers
        .get(headers::PROCEDURE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RpcError::invalid(None, "the Rpc-Procedure header is required"))?;
    let name = procedure
        .strip_prefix(namespace.as_str())
        .and_then(|rest| rest.strip_prefix("::"))
        .filter(|name| PROCEDURES.contains(name))
        .ok_or_else(|| {
            RpcError::new(
                "Unimplemented",
                StatusCode::NOT_IMPLEMENTED,
                None,
                format!(
                    "no procedure {procedure:?} here (this dispatcher serves {namespace}::{{{}}})",
                    PROCEDURES.join("|")
                ),
            )
        })?;
    let request: RpcRequest = json::decode_rpc_request(body).map_err(|e| {
        let code = match &e {
            omnirelay_resourcelease::DecodeError::Field { path, reason }
                if path.starts_with("items[") && reason.contains("null") =>
            {
                Some("resourcelease.restore.pending_item_required")
            }
            _ => None,
        };
        RpcError::invalid(code, format!("the request body does not read: {e}"))
    })?;
    let token = || {
        request.ownership_token.ok_or_else(|| {
            RpcError::invalid(
                Some("resourcelease.ownership_token_required"),
                "ownershipToken is required",
            )
        })
    };
    let response = match name {
        "enqueue" => {
            let payload = request.payload.clone().ok_or_else(|| {
                RpcError::invalid(Some(codes::PAYLOAD_REQUIRED), "payload is required")
            })?;
            let peer = peer_of(None, request_headers)?;
            // As for `lease`, the deadline bounds the wait for room, not
            // the enqueue: one made in time is answered.
            let stats = match ttl_of(request_headers)? {
                Some(ms) => dispatcher
                    .enqueue_within(payload, peer.as_deref(), Duration::from_millis(ms))
                    .await?
                    .ok_or_else(|| {
                        deadline_exceeded(format!(
                            "no room in the queue within {ms} ms (it is full, or backpressure \
                             holds enqueuers back); nothing was enqueued"
                        ))
                    })?,
                None => dispatcher.enqueue(payload, peer.as_deref()).await?,
            };
            ok(&RpcResponse::Enqueued {
                pending: stats.pending,
                active: stats.active,
            })
        }
        "lease" => {
            let owner = peer_of(request.peer_id.as_deref(), request_headers)?;
            let ttl = ttl_of(request_headers)?;
            // The deadline bounds the wait for an item, not the grant: an
            // item granted in time is answered, never left leased to
            // nobody.
            let lease = match ttl {
                Some(ms) => dispatcher
                    .lease_within(owner.as_deref(), Duration::from_millis(ms))
                    .await?
                    .ok_or_else(|| deadline_exceeded(format!("no item to lease within {ms} ms")))?,
                None => dispatcher.lease(owner.as_deref()).await?,
            };
            ok(&RpcResponse::Leased {
                item: &lease.item,
                token: &lease.handle,
                owner: lease.owner.as_deref(),
            })
        }
        "complete" => {
            dispatcher.complete(&token()?).await?;
            ok(&RpcResponse::Acknowledged)
        }
        "heartbeat" => {
            dispatcher.heartbeat(&token()?).await?;
            ok(&RpcResponse::Acknowledged)
        }
        "fail" => {
            dispatcher
                .fail(
                    &token()?,
                    request.reason.as_deref(),
                    request.error_code.as_deref(),
                    request.requeue.unwrap_or(true),
                )
                .await?;
            ok(&RpcResponse::Acknowledged)
        }
        "drain" => {
            let items = dispatcher.drain().await?;
            ok(&RpcResponse::Drained(&items))
        }
        _ => {
            let items = request.items.clone().unwrap_or_default();
            let peer = peer_of(None, request_headers)?;
            let count = dispatcher.restore(items, peer.as_deref()).await?;
            ok(&RpcResponse::Restored(count))
        }
    };
    Ok(response)
}

/// `Rpc-Ttl-Ms`: how long the caller will wait, in milliseconds.
fn ttl_of(request_headers: &HeaderMap) -> Result<Option<u64>, RpcError> {
    request_headers
        .get(headers::TTL_MS)
        .map(|value| {
            let text = String::from_utf8_lossy(value.as_bytes());
            text.trim().parse::<u64>().map_err(|_| {
                RpcError::invalid(
                    None,
                    format!("Rpc-Ttl-Ms must be a whole number of milliseconds, not {text:?}"),
                )
            })
        })
        .transpose()
}

fn deadline_exceeded(message: String) -> RpcError {
    RpcError::new(
        "DeadlineExceeded",
        StatusCode::GATEWAY_TIMEOUT,
        None,
        message,
    )
}

/// A standby's HTTP surface: `GET /standby` (where it stands, JSON),
/// `POST /standby/promote` (promote it once safe, waiting up to 15 s, or
/// `?wait_ms=N`, for that, else `409 Conflict` saying why; `?force=true`
/// promotes at once whatever the hazard), and the RPC — refused
/// (`Unavailable`) until promoted, then the dispatcher's.
pub fn standby_router(standby: Arc<crate::Standby>) -> axum::Router {
    use axum::routing::{get, post};
    let serving: Arc<std::sync::OnceLock<axum::Router>> = Arc::default();
    axum::Router::new()
        .route("/standby", get(standby_status))
        .route(PROMOTE_PATH, post(promote))
        .route(DEAD_LETTERS_PATH, get(standby_dead_letters))
        .fallback(standby_rpc)
        .with_state((standby, serving))
}

type StandbyState = (Arc<crate::Standby>, Arc<std::sync::OnceLock<axum::Router>>);

fn status_json(status: &crate::StandbyStatus) -> serde_json::Value {
    serde_json::json!({
        "role": if status.promoted { "dispatcher" } else { "standby" },
        "following": status.following,
        "connected": status.connected,
        "appliedSequence": status.applied,
        "primaryHead": status.primary_head,
        "lagEvents": status.lag_events(),
        "lastError": status.last_error,
        "primaryLastWrite": status.last_written.map(omnirelay_replication::Timestamp::to_json_string),
    })
}

/// The dead letters of the projection, or of the dispatcher once
/// promoted.
async fn standby_dead_letters(
    State((standby, _)): State<StandbyState>,
    RawQuery(query): RawQuery,
) -> Response {
    let (offset, limit) = match page_of(query.as_deref()) {
        Ok(page) => page,
        Err(error) => return error.into_response(),
    };
    let (page, total) = match standby.dispatcher() {
        Some(dispatcher) => dispatcher.dead_letters_page(offset, limit).await,
        None => standby.dead_letters_page(offset, limit).await,
    };
    dead_letters_response(&page, total)
}

async fn standby_status(State((standby, _)): State<StandbyState>) -> Response {
    let mut body = status_json(&standby.status());
    // Why `POST /standby/promote` would refuse now (null: it would not).
    body["promotionHazard"] = standby.promotion_hazard().into();
    // Whether its sinks may run (see `Standby::wait_log_checked`).
    body["logChecked"] = standby.is_log_checked().into();
    axum::Json(body).into_response()
}

/// Where a standby is promoted (`POST`).
pub const PROMOTE_PATH: &str = "/standby/promote";

/// The query of `POST /standby/promote`.
#[derive(serde::Deserialize)]
struct PromoteQuery {
    /// Promote even when [`crate::Standby::promotion_hazard`] says it is
    /// unsafe.
    #[serde(default)]
    force: bool,
    /// How long to wait for a promotion to become safe, in milliseconds
    /// (default [`PROMOTE_WAIT`]).
    wait_ms: Option<u64>,
}

/// How long `POST /standby/promote` waits for a promotion to become safe
/// by default: longer than a standby takes to notice a primary whose host
/// went away (two unanswered keep-alive pings).
pub const PROMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

async fn promote(
    State((standby, _)): State<StandbyState>,
    axum::extract::Query(query): axum::extract::Query<PromoteQuery>,
) -> Response {
    let promoted = if query.force {
        standby.promote().await
    } else {
        let wait = query
            .wait_ms
            .map_or(PROMOTE_WAIT, std::time::Duration::from_millis);
        standby.promote_when_safe(wait).await
    };
    match promoted {
        Ok(dispatcher) => {
            let stats = dispatcher.stats().await;
            let mut body = status_json(&standby.status());
            body["pendingCount"] = stats.pending.into();
            body["activeLeaseCount"] = stats.active.into();
            axum::Json(body).into_response()
        }
        Err(error) if error.kind() == omnirelay_replication::ErrorKind::Rejected => {
            (StatusCode::CONFLICT, format!("{}\n", error.message())).into_response()
        }
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("promotion failed: {error}\n"),
        )
            .into_response(),
    }
}

async fn standby_rpc(
    State((standby, serving)): State<StandbyState>,
    request: axum::extract::Request,
) -> Response {
    use tower::ServiceExt as _;
    let Some(dispatcher) = standby.dispatcher() else {
        if request.headers().contains_key(headers::PROCEDURE)
            || [REDRIVE_PATH, PURGE_PATH].contains(&request.uri().path())
        {
            return RpcError::new(
                "Unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "this node is a standby: it serves once promoted (POST /standby/promote)",
            )
            .into_response();
        }
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let router = serving.get_or_init(|| router(dispatcher)).clone();
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
