//! # omnirelay-controlplane
//!
//! The control plane's diagnostics service: it watches every host (each
//! node's `GET /status`: streams, sinks, queue, standby), notices hosts
//! going down and coming back, measures each host's throughput, and
//! serves one status document of them all — the shape every node serves
//! for itself, so `omnirelay status` reads either.

#![warn(missing_docs)]

pub mod events;
mod hosts;
pub mod journal;
pub mod mesh;
pub mod settings;
mod tls;

pub use hosts::{ControlPlane, HISTORY, HostAccess, HostView, Options};

/// The dashboard: one self-contained page (no external assets), polling
/// `/status` and `/api/events` every second.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The control plane's HTTP surface: `GET /` (the dashboard), `GET /status` and `/api/hosts` (every
/// host's status), `GET /api/events?limit=N` (the newest events with their
/// host), `GET /demo/replication` (the newest events as a JSON array of
/// reference events, as the reference demo served them), `GET
/// /demo/backpressure` (the newest backpressure signal of any host, or 204)
/// and `GET /demo/lease-health` (every host's peers), `GET /demo/catalogs`
/// (the lakehouse catalog the serving dispatcher's completed operations add
/// up to) and `POST /demo/enqueue` (a catalog operation enqueued on the
/// serving dispatcher).
pub fn router(plane: std::sync::Arc<ControlPlane>) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::routing::get;
    use std::sync::Arc;

    #[derive(serde::Deserialize)]
    struct Limit {
        limit: Option<usize>,
    }

    async fn status(State(plane): State<Arc<ControlPlane>>) -> axum::Json<serde_json::Value> {
        axum::Json(plane.status())
    }
    async fn events(
        State(plane): State<Arc<ControlPlane>>,
        Query(limit): Query<Limit>,
    ) -> axum::Json<serde_json::Value> {
        let limit = limit.limit.unwrap_or(100).min(events::RECENT);
        let recent: Vec<serde_json::Value> = plane
            .events()
            .recent(limit)
            .into_iter()
            .map(|seen| serde_json::json!({"host": seen.host, "event": seen.event}))
            .collect();
        axum::Json(serde_json::json!({
            "events": recent,
            "counts": plane.events().counts(),
        }))
    }
    async fn replication(State(plane): State<Arc<ControlPlane>>) -> axum::Json<serde_json::Value> {
        let recent: Vec<serde_json::Value> = plane
            .events()
            .recent(100)
            .into_iter()
            .map(|seen| seen.event)
            .collect();
        axum::Json(serde_json::Value::Array(recent))
    }
    async fn dashboard() -> impl axum::response::IntoResponse {
        (
            [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
            DASHBOARD,
        )
    }
    /// The newest backpressure transition any dispatcher host reported
    /// (the reference's signal JSON), or 204 when there was none.
    async fn backpressure(State(plane): State<Arc<ControlPlane>>) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let latest = plane
            .hosts()
            .into_iter()
            .filter_map(|h| h.status?.get("backpressure")?.get("latest").cloned())
            .filter(|signal| !signal.is_null())
            .max_by(|a, b| {
                a["observedAt"]
                    .as_str()
                    .unwrap_or("")
                    .cmp(b["observedAt"].as_str().unwrap_or(""))
            });
        match latest {
            Some(signal) => axum::Json(signal).into_response(),
            None => axum::http::StatusCode::NO_CONTENT.into_response(),
        }
    }
    /// Every dispatcher host's lease health per peer.
    async fn lease_health(State(plane): State<Arc<ControlPlane>>) -> axum::Json<serde_json::Value> {
        let peers: Vec<serde_json::Value> = plane
            .hosts()
            .into_iter()
            .flat_map(|h| {
                let url = h.url.clone();
                h.status
                    .and_then(|s| s.get("leaseHealth").cloned())
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |mut peer| {
                        peer["host"] = serde_json::json!(url);
                        peer
                    })
            })
            .collect();
        axum::Json(serde_json::json!({ "peers": peers }))
    }
    /// The control plane's own events (its journal), newest `limit`.
    async fn journal(
        State(plane): State<Arc<ControlPlane>>,
        Query(limit): Query<Limit>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let Some(journal) = plane.journal() else {
            return axum::Json(serde_json::json!({"events": []})).into_response();
        };
        match journal.recent(limit.limit.unwrap_or(100) as u64).await {
            Ok(events) => axum::Json(serde_json::json!({
                "events": events.iter().map(journal::PlaneEvent::to_json).collect::<Vec<_>>()
            }))
            .into_response(),
            Err(error) => (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("the journal cannot be read: {error}\n"),
            )
                .into_response(),
        }
    }
    /// The catalog of the serving dispatcher's stream (the first host
    /// with a catalog when no dispatcher is up).
    async fn catalogs(State(plane): State<Arc<ControlPlane>>) -> axum::Json<serde_json::Value> {
        let serving = plane.serving_dispatcher().map(|(url, _)| url);
        let catalog = serving
            .and_then(|url| plane.events().catalog(&url))
            .or_else(|| {
                plane
                    .hosts()
                    .iter()
                    .find_map(|h| plane.events().catalog(&h.url))
            })
            .unwrap_or_else(|| mesh::Catalog::default().snapshot());
        axum::Json(catalog)
    }
    /// The reference's `MeshEnqueueRequest` in, the dispatcher's enqueue
    /// response out (its RPC error, status and headers as they came).
    async fn enqueue(
        State(plane): State<Arc<ControlPlane>>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::http::StatusCode;
        use axum::response::IntoResponse as _;
        let request: mesh::EnqueueRequest = if body.iter().all(u8::is_ascii_whitespace) {
            mesh::EnqueueRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(e) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("not an enqueue request: {e}\n"),
                    )
                        .into_response();
                }
            }
        };
        let Some((url, namespace)) = plane.serving_dispatcher() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "no dispatcher host is up to enqueue on\n",
            )
                .into_response();
        };
        let client = plane.rpc_client(&url, &namespace);
        match client.enqueue(&request.payload()).await {
            Ok(response) => axum::Json(response).into_response(),
            Err(error) => {
                let status = StatusCode::from_u16(error.status)
                    .ok()
                    .filter(|s| !s.is_success())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let mut response = (status, format!("{error}\n")).into_response();
                if let Some(code) = error
                    .code
                    .and_then(|c| axum::http::HeaderValue::from_str(&c).ok())
                {
                    response.headers_mut().insert("rpc-error-code", code);
                }
                response
            }
        }
    }
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/demo/catalogs", get(catalogs))
        .route("/demo/enqueue", axum::routing::post(enqueue))
        .route("/api/journal", get(journal))
        .route("/demo/backpressure", get(backpressure))
        .route("/demo/lease-health", get(lease_health))
        .route("/status", get(status))
        .route("/api/hosts", get(status))
        .route("/api/events", get(events))
        .route("/demo/replication", get(replication))
        .with_state(plane)
}
