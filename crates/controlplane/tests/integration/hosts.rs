//! Watching hosts over real sockets: up, throughput, down, back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use omnirelay_controlplane::journal::{Journal, Kind};
use omnirelay_controlplane::{ControlPlane, Options};
use serde_json::json;

/// A host answering `/status` with a stream whose last sequence grows by
/// 10 each time it is asked (its sink applies half); dropping the handle stops it.
async fn host(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let sequence = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let last = sequence.fetch_add(10, Ordering::Relaxed) + 10;
            async move {
                axum::Json(json!({"hosts": [{
                    "url": "self", "up": true, "role": "dispatcher",
                    "streams": [{"stream": "default", "last_sequence": last}],
                    "sinks": [{"stream": "default", "sink": "export", "lag_events": 0, "applied": last / 2}],
                }]}))
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn until(plane: &ControlPlane, what: &str, check: impl Fn(&ControlPlane) -> bool) {
    for _ in 0..200 {
        if check(plane) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {what}: {}", plane.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_watched_through_an_outage() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = host(listener).await;
    let nobody = "http://127.0.0.1:1".to_owned();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).await.unwrap();
    let plane = ControlPlane::start(
        Options {
            poll_interval: Duration::from_millis(50),
            timeout: Duration::from_millis(500),
            ..Options::new(vec![format!("http://{address}/"), nobody.clone()])
        },
        Some(journal.clone()),
    )
    .unwrap();
    until(&plane, "up", |p| {
        p.hosts().iter().any(|h| h.up && h.events_per_second > 0.0)
    })
    .await;
    let status = plane.status();
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    let live = hosts.iter().find(|h| h["up"] == true).unwrap();
    assert_eq!(
        live["url"],
        format!("http://{address}"),
        "the control plane's URL, not the host's word"
    );
    assert_eq!(live["role"], "dispatcher");
    assert_eq!(live["sinks"][0]["sink"], "export");
    until(&plane, "a sink's throughput", |p| {
        p.status()["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["sinks"][0]["eventsPerSecond"].as_f64() > Some(0.0))
    })
    .await;
    let dead = hosts.iter().find(|h| h["url"] == nobody).unwrap();
    assert_eq!(dead["up"], false);
    assert!(dead["error"].as_str().is_some());

    let live_url = format!("http://{address}");
    // The host goes away: down, counted once; it comes back: up.
    server.abort();
    let _ = server.await;
    until(&plane, "down", |p| p.hosts().iter().all(|h| !h.up)).await;
    let outages = plane.hosts().iter().map(|h| h.outages).sum::<u64>();
    assert_eq!(outages, 1);
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let _server = host(listener).await;
    until(&plane, "back", |p| p.hosts().iter().any(|h| h.up)).await;
    // Its throughput history went through the outage: busy, zero while
    // down, bounded.
    let history = plane
        .hosts()
        .into_iter()
        .find(|h| h.url == live_url)
        .unwrap()
        .history;
    assert!(history.len() <= omnirelay_controlplane::HISTORY);
    let busy = history.iter().position(|&s| s > 0.0).unwrap();
    assert!(history[busy..].contains(&0.0), "{history:?}");
    let status = plane.status();
    let served = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["url"] == live_url.as_str())
        .unwrap()["throughputHistory"]
        .as_array()
        .unwrap()
        .len();
    assert!(served >= history.len(), "the status serves the history");

    // The control plane's own log says what happened to the host, in order;
    // the host that never answered never went down.
    let mut kinds = Vec::new();
    for _ in 0..100 {
        kinds = journal
            .recent(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.host, e.sequence))
            .collect();
        if kinds.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = format!("http://{address}");
    assert_eq!(
        kinds,
        vec![
            (Kind::HostUp, live.clone(), 1),
            (Kind::HostDown, live.clone(), 2),
            (Kind::HostUp, live, 3),
        ]
    );
    drop(plane);
    journal.close().await.unwrap();
}
