//! Watching hosts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::journal::{Journal, Kind, PlaneEvent};
use crate::tls::{self, HostClient};

/// How the control plane watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The hosts: each node's URL (`http://host:port` or
    /// `https://host:port`).
    pub hosts: Vec<String>,
    /// How often each host is asked for its status.
    pub poll_interval: Duration,
    /// How long one ask may take before the host counts as down.
    pub timeout: Duration,
    /// A bearer token to send (the hosts' `[server] token`).
    pub token: Option<String>,
    /// For `https://` hosts: the PEM certificate(s) of the authority that
    /// signed their certificates (`None`: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// A sink this many events behind raises a lag alert (cleared when it
    /// is back under it).
    pub lag_alert_events: u64,
    /// Hosts reached otherwise than `token` and `ca_pem` say, by URL (as
    /// in `hosts`, without a trailing `/`).
    pub access: BTreeMap<String, HostAccess>,
}

/// How one host is reached when it differs from the control plane's
/// defaults ([`Options::token`], [`Options::ca_pem`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAccess {
    /// Its bearer token, instead of the default.
    pub token: Option<String>,
    /// The PEM certificate(s) of the authority that signed its
    /// certificate, instead of the default.
    pub ca_pem: Option<Vec<u8>>,
}

/// How the control plane reaches one host.
#[derive(Debug)]
struct Reach {
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl Options {
    /// Watching `hosts` every second, with a two-second timeout.
    pub fn new(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            poll_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            token: None,
            ca_pem: None,
            lag_alert_events: 1000,
            access: BTreeMap::new(),
        }
    }
}

/// What the control plane knows of one host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostView {
    /// The host's URL.
    pub url: String,
    /// Whether its last status came back.
    pub up: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// Its last status (the host entry of its status document).
    pub status: Option<Value>,
    /// Events per second appended to its streams, over the last poll.
    pub events_per_second: f64,
    /// Times it went down.
    pub outages: u64,
    /// Its events per second at each of the last [`HISTORY`] polls, oldest
    /// first (0 while it was down).
    pub history: Vec<f64>,
}

/// Throughput samples kept per host (two minutes at the default poll).
pub const HISTORY: usize = 120;

#[derive(Debug, Default)]
struct Host {
    view: HostView,
    /// Total events over its streams, and when it was seen.
    last_total: Option<(u64, Instant)>,
    /// Events each sink (`stream/sink`) had applied then.
    last_applied: BTreeMap<String, u64>,
    /// The last backpressure signal seen (its time).
    last_signal: Option<String>,
    /// Sinks (`stream/sink`) over the lag alert threshold.
    lagging: std::collections::BTreeSet<String>,
}

/// The control plane. See the crate documentation.
#[derive(Debug)]
pub struct ControlPlane {
    options: Options,
    hosts: Mutex<BTreeMap<String, Host>>,
    events: Arc<crate::events::Events>,
    journal: Option<Arc<Journal>>,
    /// How each host is reached (token, trust), by URL.
    reach: BTreeMap<String, Reach>,
    /// What goes into the journal, in order.
    to_journal: Option<tokio::sync::mpsc::UnboundedSender<PlaneEvent>>,
}

/// `error` and its causes, outermost first (the client's own error only
/// says that connecting failed; its causes say why, a refused
/// certificate for one).
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Locks `mutex`, also after a panic elsewhere (the data is plain state).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlPlane {
    /// Starts watching `options.hosts` (one task per host, until the
    /// control plane is dropped), recording what it notices in `journal`.
    ///
    /// # Errors
    ///
    /// An authority (`options.ca_pem`, or a host's own) holds no PEM
    /// certificate, or (for `https://` hosts without one) the system's
    /// roots cannot be loaded.
    pub fn start(options: Options, journal: Option<Arc<Journal>>) -> Result<Arc<Self>, String> {
        let reach = Self::reach(&options)?;
        let hosts: BTreeMap<String, Host> = options
            .hosts
            .iter()
            .map(|url| {
                let url = url.trim_end_matches('/').to_owned();
                let host = Host {
                    view: HostView {
                        url: url.clone(),
                        error: Some("not asked yet".to_owned()),
                        ..HostView::default()
                    },
                    ..Host::default()
                };
                (url, host)
            })
            .collect();
        let events = crate::events::follow_all(reach.iter().map(|(url, reach)| {
            let mut connection = omnirelay_replication_grpc::Connection::new(url.clone());
            connection.token.clone_from(&reach.token);
            connection.ca_pem.clone_from(&reach.ca_pem);
            connection
        }));
        let to_journal = journal.clone().map(|journal| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PlaneEvent>();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    if let Err(error) = journal.record(event).await {
                        tracing::warn!(%error, "the control plane's journal refused an event");
                    }
                }
            });
            tx
        });
        let plane = Arc::new(Self {
            options,
            hosts: Mutex::new(hosts),
            events,
            journal,
            reach,
            to_journal,
        });
        for (url, reach) in &plane.reach {
            let client: HostClient<Empty<Bytes>> = tls::client(reach.tls.clone());
            tokio::spawn(Self::watch(Arc::downgrade(&plane), client, url.clone()));
        }
        Ok(plane)
    }

    /// How each host is reached: its own token and authority, else the
    /// defaults; one TLS configuration per authority.
    fn reach(options: &Options) -> Result<BTreeMap<String, Reach>, String> {
        let https = options.hosts.iter().any(|url| url.starts_with("https://"));
        let mut configs = BTreeMap::new();
        let mut reach = BTreeMap::new();
        for url in &options.hosts {
            let url = url.trim_end_matches('/');
            let own = options.access.get(url);
            let token = own
                .and_then(|a| a.token.clone())
                .or_else(|| options.token.clone());
            let ca_pem = own
                .and_then(|a| a.ca_pem.clone())
                .or_else(|| options.ca_pem.clone());
            let tls = match configs.get(&ca_pem) {
                Some(config) => Arc::clone(config),
                None => {
                    let config = Arc::new(
                        tls::config(ca_pem.as_deref(), https)
                            .map_err(|why| format!("{url}: {why}"))?,
                    );
                    configs.insert(ca_pem.clone(), config.clone());
                    config
                }
            };
            reach.insert(url.to_owned(), Reach { token, ca_pem, tls });
        }
        Ok(reach)
    }

    /// A client of the dispatcher host at `url` serving `namespace`, with
    /// the token and the trust the host is watched with.
    pub fn rpc_client(&self, url: &str, namespace: &str) -> crate::mesh::RpcClient {
        match self.reach.get(url.trim_end_matches('/')) {
            Some(reach) => crate::mesh::RpcClient::new(url, namespace, reach.token.clone())
                .trusting(reach.tls.clone()),
            None => crate::mesh::RpcClient::new(url, namespace, self.options.token.clone()),
        }
    }

    /// The control plane's own log, if it keeps one.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    fn note(&self, kind: Kind, host: &str, detail: Value) {
        if let Some(tx) = &self.to_journal {
            let _ = tx.send(PlaneEvent::new(kind, host, detail));
        }
    }

    /// The hosts' recent events and counts.
    pub fn events(&self) -> &crate::events::Events {
        &self.events
    }

    /// Every host, in URL order.
    pub fn hosts(&self) -> Vec<HostView> {
        lock(&self.hosts).values().map(|h| h.view.clone()).collect()
    }

    /// The status document of every host: each host's own entry (when it
    /// answered) with the control plane's view (`up`, `error`,
    /// `eventsPerSecond`, `outages`).
    pub fn status(&self) -> Value {
        let hosts: Vec<Value> = self
            .hosts()
            .into_iter()
            .map(|view| {
                let mut entry = view.status.clone().unwrap_or_else(|| json!({}));
                entry["url"] = json!(view.url);
                entry["up"] = json!(view.up);
                entry["error"] = json!(view.error);
                entry["eventsPerSecond"] = json!(view.events_per_second);
                entry["outages"] = json!(view.outages);
                entry["throughputHistory"] = json!(view.history);
                entry
            })
            .collect();
        json!({ "hosts": hosts })
    }

    async fn watch(plane: std::sync::Weak<Self>, client: HostClient<Empty<Bytes>>, url: String) {
        loop {
            let Some(this) = plane.upgrade() else {
                return;
            };
            let asked = this.ask(&client, &url).await;
            this.record(&url, asked);
            let interval = this.options.poll_interval;
            drop(this);
            tokio::time::sleep(interval).await;
        }
    }

    /// The bearer token the hosts want, unless a host has its own.
    pub fn token(&self) -> Option<&str> {
        self.options.token.as_deref()
    }

    /// The URL and RPC namespace of the first host that is up and serves
    /// as the dispatcher (a promoted standby does).
    pub fn serving_dispatcher(&self) -> Option<(String, String)> {
        self.hosts().into_iter().find_map(|host| {
            let status = host.status.filter(|_| host.up)?;
            (status["role"] == "dispatcher").then(|| {
                let namespace = status["namespace"].as_str().unwrap_or("resourcelease");
                (host.url, namespace.to_owned())
            })
        })
    }

    /// Sends `method` `path` to the host at `url` with its token, within
    /// the timeout: the answer's status and body.
    async fn send(
        &self,
        client: &HostClient<Empty<Bytes>>,
        method: hyper::Method,
        url: &str,
        path: &str,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{url}{path}"));
        if let Some(token) = self.reach.get(url).and_then(|r| r.token.as_ref()) {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("bad host URL: {e}"))?;
        let call = async {
            let response = client.request(request).await.map_err(|e| with_causes(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| with_causes(&e))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.options.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.options.timeout))?
    }

    /// The host's own entry of its status document.
    async fn ask(&self, client: &HostClient<Empty<Bytes>>, url: &str) -> Result<Value, String> {
        let (status, body) = self
            .send(client, hyper::Method::GET, url, "/status")
            .await?;
        if !status.is_success() {
            return Err(format!("status answered {status}"));
        }
        let document: Value =
            serde_json::from_slice(&body).map_err(|e| format!("not a status document: {e}"))?;
        document["hosts"]
            .get(0)
            .cloned()
            .ok_or_else(|| "an empty status document".to_owned())
    }

    /// Passes `omnirelay sink retry` on to every host, at once:
    /// `POST {host}{path}` (the node's retry endpoint with its query), with
    /// the host's token. For each host, by URL, the `{"stream", "sink"}`
    /// entries it woke (`None` when no sink of that name is there: a 404),
    /// or why it could not be asked.
    pub async fn retry_sinks(
        &self,
        path: &str,
    ) -> Vec<(String, Result<Option<Vec<Value>>, String>)> {
        let asks = self.reach.iter().map(|(url, reach)| async move {
            let client: HostClient<Empty<Bytes>> = tls::client(reach.tls.clone());
            let answer = match self.send(&client, hyper::Method::POST, url, path).await {
                Ok((status, _)) if status == hyper::StatusCode::NOT_FOUND => Ok(None),
                Ok((status, body)) if status.is_success() => serde_json::from_slice::<Value>(&body)
                    .map_err(|e| format!("not a retry answer: {e}"))
                    .map(|answer| Some(answer["retried"].as_array().cloned().unwrap_or_default())),
                Ok((status, body)) => Err(format!(
                    "answered {status}: {}",
                    String::from_utf8_lossy(&body).trim_end()
                )),
                Err(error) => Err(error),
            };
            (url.clone(), answer)
        });
        futures::future::join_all(asks).await
    }

    fn record(&self, url: &str, asked: Result<Value, String>) {
        let mut hosts = lock(&self.hosts);
        let Some(host) = hosts.get_mut(url) else {
            return;
        };
        match asked {
            Ok(mut status) => {
                if !host.view.up {
                    tracing::info!(host = url, "host up");
                    self.note(Kind::HostUp, url, json!({"role": status["role"]}));
                }
                let signal = status["backpressure"]["latest"].clone();
                let seen = signal["observedAt"].as_str().map(str::to_owned);
                if seen.is_some() && seen != host.last_signal {
                    host.last_signal = seen;
                    self.note(Kind::Backpressure, url, signal);
                }
                let mut lagging = std::collections::BTreeSet::new();
                for sink in status["sinks"].as_array().into_iter().flatten() {
                    let key = format!(
                        "{}/{}",
                        sink["stream"].as_str().unwrap_or("?"),
                        sink["sink"].as_str().unwrap_or("?")
                    );
                    let lag = sink["lag_events"].as_u64().unwrap_or(0);
                    if lag >= self.options.lag_alert_events {
                        if !host.lagging.contains(&key) {
                            self.note(Kind::LagAlert, url, json!({"sink": key, "lagEvents": lag}));
                        }
                        lagging.insert(key);
                    } else if host.lagging.contains(&key) {
                        self.note(
                            Kind::LagCleared,
                            url,
                            json!({"sink": key, "lagEvents": lag}),
                        );
                    }
                }
                host.lagging = lagging;
                let total: u64 = status["streams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["last_sequence"].as_u64())
                    .sum();
                let now = Instant::now();
                let since = host
                    .last_total
                    .map(|(_, at)| now.duration_since(at).as_secs_f64().max(1e-3));
                let mut applied_now = BTreeMap::new();
                for sink in status["sinks"].as_array_mut().into_iter().flatten() {
                    let key = format!(
                        "{}/{}",
                        sink["stream"].as_str().unwrap_or("?"),
                        sink["sink"].as_str().unwrap_or("?")
                    );
                    let applied = sink["applied"].as_u64().unwrap_or(0);
                    let rate = match (since, host.last_applied.get(&key)) {
                        (Some(seconds), Some(&before)) if applied >= before => {
                            (applied - before) as f64 / seconds
                        }
                        _ => 0.0,
                    };
                    sink["eventsPerSecond"] = json!(rate);
                    applied_now.insert(key, applied);
                }
                host.last_applied = applied_now;
                host.view.events_per_second = match host.last_total {
                    Some((before, at)) if total >= before => {
                        (total - before) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
                    }
                    _ => 0.0,
                };
                host.last_total = Some((total, now));
                host.view.up = true;
                host.view.error = None;
                host.view.status = Some(status);
            }
            Err(error) => {
                if host.view.up {
                    tracing::warn!(host = url, %error, "host down");
                    host.view.outages += 1;
                    self.note(Kind::HostDown, url, json!({"error": error}));
                }
                host.view.up = false;
                host.view.error = Some(error);
                host.view.events_per_second = 0.0;
                host.last_total = None;
                host.last_applied.clear();
            }
        }
        let history = &mut host.view.history;
        if history.len() == HISTORY {
            history.remove(0);
        }
        history.push(host.view.events_per_second);
    }
}
