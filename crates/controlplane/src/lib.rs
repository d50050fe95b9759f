//! # omnirelay-controlplane
//!
//! The control plane's diagnostics service: it watches every host (each
//! node's `GET /status`: streams, sinks, queue, standby), notices hosts
//! going down and coming back, measures each host's throughput, and
//! serves one status document of them all — the shape every node serves
//! for itself, so `omnirelay status` reads either.

#![warn(missing_docs)]

mod hosts;
pub mod settings;

pub use hosts::{ControlPlane, HostView, Options};

/// The control plane's HTTP surface: `GET /status` (every host) and
/// `GET /api/hosts` (the same).
pub fn router(plane: std::sync::Arc<ControlPlane>) -> axum::Router {
    use axum::routing::get;
    let status = {
        let plane = plane.clone();
        move || {
            let plane = plane.clone();
            async move { axum::Json(plane.status()) }
        }
    };
    axum::Router::new()
        .route("/status", get(status.clone()))
        .route("/api/hosts", get(status))
}
