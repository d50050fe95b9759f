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
pub mod settings;

pub use hosts::{ControlPlane, HostView, Options};

/// The dashboard: one self-contained page (no external assets), polling
/// `/status` and `/api/events` every second.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The control plane's HTTP surface: `GET /` (the dashboard), `GET /status` and `/api/hosts` (every
/// host's status), `GET /api/events?limit=N` (the newest events with their
/// host), `GET /demo/replication` (the newest events as a JSON array of
/// reference events, as the reference demo served them).
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
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/status", get(status))
        .route("/api/hosts", get(status))
        .route("/api/events", get(events))
        .route("/demo/replication", get(replication))
        .with_state(plane)
}
