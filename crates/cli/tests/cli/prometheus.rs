//! A real Prometheus, configured from `deploy/`, scrapes three running
//! `omnirelay publish` processes; every query of the Grafana dashboard and
//! the suggested alerts work against what they export.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use omnirelay_replication_testkit::process::KillOnDrop;
use serde_json::Value;

use crate::log::dir_arg;
use crate::{broken_sink_config, http_get, http_post, spawn_listening, spawn_listening_with_env};

/// How long Prometheus may take to have everything (it scrapes every
/// second here).
const PATIENCE: Duration = Duration::from_secs(90);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn event(i: usize) -> String {
    let kind = ["Enqueue", "LeaseGranted", "Completed"][i % 3];
    format!(
        r#"{{"eventType":"{kind}","peerId":"peer-{}","payload":{{"resourceType":"t","resourceId":"r{i}","partitionKey":"k","payloadEncoding":"json","body":"e30="}}}}"#,
        i % 2
    ) + "\n"
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A `publish --listen` process fed a few events every 100 ms until
/// dropped (then its input closes and it must exit cleanly).
struct Publisher {
    /// Killed when dropped before [`Publisher::finish`].
    child: KillOnDrop,
    address: String,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

impl Publisher {
    fn start(data_dir: &Path, config: Option<&Path>) -> Self {
        let mut args = vec![
            "publish".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if let Some(config) = config {
            args.extend(["--config".to_owned(), config.display().to_string()]);
        }
        let (mut child, address, stderr) = spawn_listening(&args);
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let stop = stop.clone();
            let stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || feed(stdin, &stop))
        };
        Self {
            child,
            address,
            stop,
            feeder: Some(feeder),
            stderr: log,
        }
    }

    /// Closes the input; the process must then exit with success.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(feeder) = self.feeder.take() {
            feeder.join().unwrap();
        }
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            self.address,
            self.stderr.lock().unwrap()
        );
    }
}

fn feed(mut stdin: ChildStdin, stop: &AtomicBool) {
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let batch: String = (i..i + 10).map(event).collect();
        i += 10;
        if stdin.write_all(batch.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Prometheus server on a loopback port, configured from
/// `deploy/prometheus.yml` and `deploy/alerts.yml` with only the targets
/// and intervals changed.
struct Prometheus {
    /// Held to be killed when dropped.
    _child: KillOnDrop,
    address: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[&str]) -> Self {
        Self::start_with_rules(targets, |rules| rules)
    }

    /// As [`Prometheus::start`], with the shipped alert rules changed by
    /// `edit` (a shorter `for:`, so that a test need not wait minutes).
    fn start_with_rules(targets: &[&str], edit: impl FnOnce(String) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::fs::read_to_string(deploy_dir().join("prometheus.yml")).unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = replace_once(
            &replace_once(
                &replace_once(&shipped, "scrape_interval: 15s", "scrape_interval: 1s"),
                "evaluation_interval: 15s",
                "evaluation_interval: 1s",
            ),
            r#"targets: ["127.0.0.1:7421", "127.0.0.1:7422", "127.0.0.1:7423"]"#,
            &format!("targets: [{targets}]"),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let rules = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
        std::fs::write(dir.path().join("alerts.yml"), edit(rules)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".to_owned());
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {binary} ({e}): this test needs a real Prometheus \
                     (Debian's `prometheus` package; scripts/test installs it)"
                )
            });
        let prometheus = Self {
            _child: child.into(),
            address,
            dir,
        };
        prometheus.wait_for("Prometheus to be ready", || {
            http_get(&prometheus.address, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.address, path)
            .unwrap_or_else(|| panic!("Prometheus stopped answering:\n{}", self.log()));
        let value: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(value["status"], "success", "{path}: {body}");
        value["data"].clone()
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every query of the dashboard `file` (at least `count`
    /// of them) returns data.
    fn wait_for_every_query_of(&self, file: &str, count: usize) {
        let queries = dashboard_queries(file);
        assert!(queries.len() >= count, "{queries:?}");
        let mut empty: Vec<&(String, String)> = queries.iter().collect();
        self.wait_for(&format!("every query of {file} to return data"), || {
            empty.retain(|(_, expr)| self.query(expr).is_empty());
            empty.is_empty()
        });
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; Prometheus said:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "deploy/prometheus.yml should contain `{from}` once"
    );
    text.replacen(from, to, 1)
}

fn instances(result: &[Value]) -> BTreeSet<String> {
    result
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_owned))
        .collect()
}

/// Every `expr` of the dashboard in `deploy/grafana/{file}`, with its
/// template variables set to "all", Grafana's rate interval to a window of
/// a few scrapes and its time range to a few minutes.
fn dashboard_queries(file: &str) -> Vec<(String, String)> {
    let path = deploy_dir().join("grafana").join(file);
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5s")
                .replace("$__range", "5m")
                .replace("$instance", ".*")
                .replace("$stream", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

#[test]
fn heavy_prometheus_scrapes_three_publishers_and_every_dashboard_query_has_data() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The third host also exports to a sink that cannot write (its
    // directory is a dangling link), so errors, retries and dead letters
    // have data.
    let config = broken_sink_config(dirs[2].path(), "");
    let publishers: Vec<Publisher> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            Publisher::start(
                &dir.path().join("data"),
                (i == 2).then_some(config.as_path()),
            )
        })
        .collect();
    let addresses: Vec<&str> = publishers.iter().map(|p| p.address.as_str()).collect();
    let all: BTreeSet<String> = addresses.iter().map(|&a| a.to_owned()).collect();
    let prometheus = Prometheus::start(&addresses);

    prometheus.wait_for("every target to be up", || {
        let up = prometheus.query(r#"up{job="omnirelay"} == 1"#);
        instances(&up) == all
    });
    for family in ["omnirelay_replication_.+", "omnirelay_resourcelease_.+"] {
        prometheus.wait_for(&format!("{family} series from every host"), || {
            let found = prometheus.query(&format!(
                r#"count by (instance) ({{__name__=~"{family}"}})"#
            ));
            instances(&found) == all
        });
    }

    prometheus.wait_for_every_query_of("omnirelay-replication.json", 12);
    // Per-host panels see every host (a rate needs two scrapes in its
    // window).
    prometheus.wait_for("sent rates from every host", || {
        let sent = prometheus.query(
            r#"sum by (instance, sink) (rate(omnirelay_replication_sink_sent_events_total[5s]))"#,
        );
        instances(&sent) == all
    });
    let errors =
        prometheus.query("sum by (instance, sink, kind) (omnirelay_replication_sink_errors_total)");
    assert_eq!(errors.len(), 1, "only the broken sink fails: {errors:?}");
    assert_eq!(errors[0]["metric"]["instance"], addresses[2]);
    assert_eq!(errors[0]["metric"]["sink"], "broken");
    assert_eq!(errors[0]["metric"]["kind"], "unavailable");

    // The suggested alerts load, evaluate, and the dead-letter alert
    // names the broken sink on its host.
    let shipped_rules = std::fs::read_to_string(deploy_dir().join("alerts.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    prometheus.wait_for("every alert rule to evaluate cleanly", || {
        let rules = prometheus.api("/api/v1/rules");
        let rules: Vec<&Value> = rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == shipped_rules && rules.iter().all(|r| r["health"] == "ok")
    });
    prometheus.wait_for("the dead-letter alert", || {
        let alerts = prometheus.api("/api/v1/alerts");
        alerts["alerts"].as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == "OmniRelayDeadLetters"
                && a["labels"]["instance"] == addresses[2]
                && a["labels"]["sink"] == "broken"
        })
    });

    for publisher in publishers {
        publisher.finish();
    }
}

/// An RPC of the dispatcher at `address` (namespace `resourcelease`) as
/// `peer`; the answer's JSON.
fn rpc(address: &str, procedure: &str, peer: &str, body: &str) -> Value {
    let (status, _, answer) = http_post(
        address,
        &[
            ("Rpc-Procedure", &format!("resourcelease::{procedure}")),
            ("Rpc-Caller", peer),
        ],
        body,
    );
    assert_eq!(status, 200, "{procedure}: {answer}");
    serde_json::from_str(&answer).unwrap()
}

#[test]
fn heavy_prometheus_scrapes_a_dispatcher_its_seeder_and_workers_and_every_mesh_panel_has_data() {
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str, role: &str, extra: &[&str], env: &[(&str, &str)]| {
        let data = dir.path().join(name);
        let mut args = vec![
            "serve".to_owned(),
            "--role".to_owned(),
            role.to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            dir_arg(&data).to_owned(),
        ];
        args.extend(extra.iter().map(|&a| a.to_owned()));
        let (child, address, _stderr) = spawn_listening_with_env(&args, env);
        (child, address)
    };
    // Backpressure at 8 pending, off at 2: a seeder enqueuing every 50 ms
    // outruns two workers and turns it on and off.
    let (_dispatcher, dispatcher) = node(
        "dispatcher",
        "dispatcher",
        &[],
        &[
            (
                "OMNIRELAY_SERVICES__DISPATCHER__BACKPRESSURE__HIGH_WATERMARK",
                "8",
            ),
            (
                "OMNIRELAY_SERVICES__DISPATCHER__BACKPRESSURE__LOW_WATERMARK",
                "2",
            ),
            (
                "OMNIRELAY_SERVICES__DISPATCHER__BACKPRESSURE__COOLDOWN_MS",
                "100",
            ),
        ],
    );
    let url = format!("http://{dispatcher}");
    let (_seeder, seeder) = node(
        "seeder",
        "seeder",
        &["--dispatcher", &url],
        &[("OMNIRELAY_SERVICES__MESH__SEED_INTERVAL_MS", "50")],
    );
    let worker = |peer: &str| node(peer, "worker", &["--dispatcher", &url, "--peer", peer], &[]);
    let ((_worker_a, worker_a), (_worker_b, worker_b)) = (worker("worker-a"), worker("worker-b"));
    let addresses = [
        dispatcher.as_str(),
        seeder.as_str(),
        worker_a.as_str(),
        worker_b.as_str(),
    ];
    let all: BTreeSet<String> = addresses.iter().map(|&a| a.to_owned()).collect();
    let prometheus = Prometheus::start(&addresses);
    prometheus.wait_for("every target to be up", || {
        instances(&prometheus.query(r#"up{job="omnirelay"} == 1"#)) == all
    });
    // The reference's histograms are histograms, as its dashboard queried
    // them (`_bucket` series), not summaries.
    prometheus.wait_for("the reference's histograms as _bucket series", || {
        [
            "omnirelay_resourcelease_pending_items_bucket",
            "omnirelay_resourcelease_active_leases_bucket",
            "omnirelay_peer_lease_duration_ms_bucket",
            "omnirelay_resourcelease_replication_lag_ms_bucket",
        ]
        .iter()
        .all(|name| !prometheus.query(name).is_empty())
    });
    // A peer that fails an item without requeue: a disconnect.
    let lease = (0..50)
        .map(|_| rpc(&dispatcher, "lease", "probe", "{}"))
        .find(|lease| lease["ownershipToken"].is_object())
        .expect("a lease while the seeder enqueues");
    let fail = serde_json::json!({
        "ownershipToken": lease["ownershipToken"],
        "reason": "probe",
        "errorCode": "probe.failure",
        "requeue": false,
    });
    rpc(&dispatcher, "fail", "probe", &fail.to_string());

    prometheus.wait_for_every_query_of("resourcelease-mesh.json", 18);
    // Both series exist from the start; the seeder turns both states on.
    prometheus.wait_for("backpressure on and off", || {
        let transitions = prometheus.query(
            "sum by (state) (omnirelay_resourcelease_backpressure_transitions_events_total) > 0",
        );
        transitions.len() == 2
    });
    // Scraped at the next interval after the failure.
    prometheus.wait_for("the probe's disconnect", || {
        prometheus
            .query("sum by (rpc_peer) (omnirelay_peer_lease_disconnects_signals_total) > 0")
            .iter()
            .any(|d| d["metric"]["rpc_peer"] == "probe")
    });
    // Both workers' items, by outcome, from their own hosts.
    prometheus.wait_for("items from both workers", || {
        let items =
            prometheus.query("sum by (peer) (omnirelay_mesh_items_total{outcome=~\"created|updated|duplicate\"}) > 0");
        items.len() == 2
    });
}

/// The standby alerts of `deploy/alerts.yml` against real standbys: one
/// that cannot reach its primary is reported as not following (its
/// connected gauge 0, its lag unknown and so absent), one following a
/// running dispatcher is not; once promoted, the first is no longer
/// reported.
#[test]
fn heavy_prometheus_alerts_on_a_standby_that_does_not_follow() {
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str, args: &[&str]| {
        let data = dir.path().join(name);
        let mut all = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_arg(&data),
        ];
        all.extend_from_slice(args);
        let (child, address, _stderr) = spawn_listening(&all);
        (child, address)
    };
    let (_primary, primary) = node("primary", &["--role", "dispatcher"]);
    let primary_url = format!("http://{primary}");
    let (_following, following) = node(
        "following",
        &["--role", "standby", "--follow", &primary_url],
    );
    // Nothing listens there.
    let (_stranded, stranded) = node(
        "stranded",
        &["--role", "standby", "--follow", "http://127.0.0.1:1"],
    );
    let targets = [following.as_str(), stranded.as_str()];
    let prometheus = Prometheus::start_with_rules(&targets, |rules| {
        rules.replace("        for: 1m\n", "        for: 2s\n")
    });
    let firing = |name: &str| -> BTreeSet<String> {
        let alerts = prometheus.api("/api/v1/alerts");
        alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .filter_map(|a| a["labels"]["instance"].as_str().map(str::to_owned))
            .collect()
    };
    prometheus.wait_for("the connected gauges", || {
        let connected = prometheus.query("omnirelay_dispatcher_standby_connected");
        connected.len() == 2
            && connected.iter().all(|c| {
                let expected = if c["metric"]["instance"] == following.as_str() {
                    "1"
                } else {
                    "0"
                };
                c["value"][1] == expected
            })
    });
    // Each gauge says what it is.
    for name in [
        "omnirelay_dispatcher_standby_connected",
        "omnirelay_dispatcher_standby_promoted",
        "omnirelay_dispatcher_standby_lag_events",
    ] {
        prometheus.wait_for(&format!("the help text of {name}"), || {
            let metadata = prometheus.api(&format!("/api/v1/metadata?metric={name}"));
            metadata[name][0]["help"]
                .as_str()
                .is_some_and(|help| !help.is_empty())
        });
    }
    // The following standby's lag is known (0); the stranded one's is
    // not, so it has no series.
    let lag = prometheus.query("omnirelay_dispatcher_standby_lag_events");
    assert_eq!(
        instances(&lag),
        BTreeSet::from([following.clone()]),
        "{lag:?}"
    );
    prometheus.wait_for("the stranded standby's alert", || {
        !firing("OmniRelayStandbyNotFollowing").is_empty()
    });
    assert_eq!(
        firing("OmniRelayStandbyNotFollowing"),
        BTreeSet::from([stranded.clone()]),
        "only the standby that cannot reach its primary"
    );
    // Promoted (forced: it never learned its primary's head), it follows
    // nothing on purpose: the alert ends.
    let promote = format!("http://{stranded}");
    let out = crate::omnirelay(&["promote", "--url", &promote, "--force"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    prometheus.wait_for("the promoted gauge", || {
        prometheus
            .query("omnirelay_dispatcher_standby_promoted == 1")
            .iter()
            .any(|p| p["metric"]["instance"] == stranded.as_str())
    });
    prometheus.wait_for("the alert to end", || {
        firing("OmniRelayStandbyNotFollowing").is_empty()
    });
}
