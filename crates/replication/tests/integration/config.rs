//! Configuration: parse, validate (with key paths and origins), build.

use std::sync::Arc;

use omnirelay_replication::config::{self, DEFAULT_TOML, SinkRegistry, Source};
use omnirelay_replication::{Durability, Encoding, ReplicatorExt, WireVersion};
use omnirelay_replication_testkit::{Note, NoteCodec};

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("omnirelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn errors(file: &std::path::Path, vars: &[(&str, &str)]) -> Vec<String> {
    match config::load_with(Some(file), &env(vars)) {
        Err(err) => vec![err.to_string()],
        Ok(loaded) => match loaded.validate(&SinkRegistry::discovered(), WireVersion::V2) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.0.iter().map(ToString::to_string).collect(),
        },
    }
}

#[test]
fn the_embedded_default_is_valid_and_round_trips_as_a_file() {
    let registry = SinkRegistry::discovered();
    let embedded = config::load_with(None, &[]).unwrap();
    let valid = embedded.validate(&registry, WireVersion::V2).unwrap();
    assert_eq!(valid.sinks.len(), 1);
    assert_eq!(valid.sinks[0].name, "export");
    assert_eq!(valid.sinks[0].options.encoding, Encoding::JSON_V1);
    assert_eq!(valid.durable.log.durability, Durability::Fsync);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), DEFAULT_TOML);
    let from_file = config::load_with(Some(&file), &[]).unwrap();
    assert_eq!(from_file.config, embedded.config);
    // The documented values are the library's defaults.
    let replication = &embedded.config.replication;
    assert_eq!(replication.log, config::LogConfig::default());
    let export = &replication.sinks["export"];
    let defaults = config::SinkConfig::default();
    assert_eq!(export.batch, defaults.batch);
    assert_eq!(export.retry, defaults.retry);
    assert_eq!(
        (
            export.checkpoint_interval_ms,
            export.max_lag_events,
            export.write_version
        ),
        (
            defaults.checkpoint_interval_ms,
            defaults.max_lag_events,
            defaults.write_version
        )
    );
    assert!(registry.types().contains(&"file") && registry.types().contains(&"memory"));
}

#[test]
fn an_unknown_key_names_the_file_and_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.sinks.a]\ntype = \"memory\"\n[replication.sinks.a.batch]\nmax_evnts = 3\n",
    );
    let errs = errors(&file, &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let expected_prefix = format!(
        "{}: replication.sinks.a.batch.max_evnts: unknown key `max_evnts`",
        file.display()
    );
    assert!(errs[0].starts_with(&expected_prefix), "{}", errs[0]);
    assert!(!errs[0].contains("settings` table"), "{}", errs[0]);
}

#[test]
fn an_unknown_value_names_the_values_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.sinks.a]\ntype = \"memory\"\nmode = \"requird\"\n",
    );
    let errs = errors(&file, &[]);
    assert_eq!(
        errs,
        [format!(
            "{}: replication.sinks.a.mode: unknown value `requird` (expected one of: required, best_effort)",
            file.display()
        )]
    );
}

#[test]
fn a_sink_types_key_beside_the_sink_points_to_its_settings_table() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\n",
    );
    let errs = errors(&file, &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("replication.sinks.out.path: unknown key `path`")
            && errs[0].contains("go in its `replication.sinks.out.settings` table"),
        "{}",
        errs[0]
    );
}

#[test]
fn a_wrong_type_names_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.log]\nsegment_max_bytes = \"big\"\n",
    );
    let errs = errors(&file, &[]);
    assert!(
        errs[0].contains("replication.log.segment_max_bytes"),
        "{errs:?}"
    );
    assert!(errs[0].contains("string"), "{errs:?}");
}

#[test]
fn out_of_range_values_are_all_reported_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        r#"
[replication.log]
segment_max_bytes = 10
[replication.sinks.out]
type = "file"
write_version = 3
[replication.sinks.out.retry]
multiplier = 0.5
[replication.sinks.out.settings]
max_file_bytes = 5
[replication.sinks.bad]
type = "kafka"
"#,
    );
    let errs = errors(&file, &[]);
    let joined = errs.join("\n");
    for want in [
        "replication.log.segment_max_bytes: must be at least 4096 (is 10)",
        "replication.sinks.out.write_version: must be between 1 and 2 (is 3)",
        "replication.sinks.out.retry.multiplier: must be between 1 and 100 (is 0.5)",
        "replication.sinks.out.settings.max_file_bytes: must be at least 1024",
        "replication.sinks.bad.type: unknown sink type \"kafka\" (one of: file, memory",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert!(
        errs.iter()
            .all(|e| e.starts_with(&file.display().to_string())),
        "{joined}"
    );
}

#[test]
fn unknown_settings_of_a_sink_type_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.sinks.f]\ntype = \"file\"\n[replication.sinks.f.settings]\ndirectory = \"x\"\n",
    );
    let errs = errors(&file, &[]);
    assert!(errs[0].contains("replication.sinks.f.settings"), "{errs:?}");
    assert!(errs[0].contains("unknown field `directory`"), "{errs:?}");
}

#[test]
fn the_environment_overrides_the_file_and_is_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.log]\ndurability = \"fsync\"\n[replication.sinks.export]\ntype = \"memory\"\n",
    );
    let loaded = config::load_with(
        Some(&file),
        &env(&[("OMNIRELAY_REPLICATION__LOG__DURABILITY", "none")]),
    )
    .unwrap();
    assert_eq!(
        loaded
            .validate(&SinkRegistry::discovered(), WireVersion::V2)
            .unwrap()
            .durable
            .log
            .durability,
        Durability::None
    );
    let errs = errors(
        &file,
        &[("OMNIRELAY_REPLICATION__LOG__TAIL_MAX_EVENTS", "0")],
    );
    assert_eq!(
        errs,
        [
            "environment variable OMNIRELAY_REPLICATION__LOG__TAIL_MAX_EVENTS: replication.log.tail_max_events: must be at least 1 (is 0)"
        ]
    );
    // Arrays are TOML in a variable; an element's error names the variable.
    let errs = errors(
        &file,
        &[(
            "OMNIRELAY_REPLICATION__SINKS__EXPORT__STREAMS",
            r#"["orders", "bad id"]"#,
        )],
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("environment variable OMNIRELAY_REPLICATION__SINKS__EXPORT__STREAMS: replication.sinks.export.streams.1: invalid stream id \"bad id\""),
        "{errs:?}"
    );
    let errs = errors(&file, &[("OMNIRELAY_NOT_A_KEY", "1")]);
    assert!(errs[0].contains("not_a_key"), "{errs:?}");
    assert!(
        errs[0].starts_with("environment variable OMNIRELAY_NOT_A_KEY"),
        "{errs:?}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = config::load_with(
        Some(std::path::Path::new("/nonexistent/omnirelay.toml")),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/omnirelay.toml: no such file (or not a regular file)"
    );
}

#[tokio::test]
async fn sinks_enabled_by_configuration_are_built_and_receive_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        &format!(
            r#"
data_dir = "{}"
[replication.log]
durability = "none"
[replication.sinks.lines]
type = "file"
write_version = 2
[replication.sinks.lines.settings]
dir = "lines"
[replication.sinks.off]
type = "memory"
enabled = false
"#,
            data.display()
        ),
    );
    let loaded = config::load_with(Some(&file), &[]).unwrap();
    let valid = loaded
        .validate(&SinkRegistry::discovered(), WireVersion::V2)
        .unwrap();
    assert_eq!(valid.sinks.len(), 1, "disabled sinks are not built");
    let replicator = valid.build(Arc::new(NoteCodec::default())).await.unwrap();
    for i in 0..3 {
        replicator
            .publish(Note::new(&format!("n{i}")))
            .await
            .unwrap();
    }
    replicator.wait_caught_up().await;
    replicator.close().await.unwrap();
    let files: Vec<_> = std::fs::read_dir(data.join("lines")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let snapshot = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(snapshot.lines().count(), 3);
    assert!(
        snapshot.starts_with("2|json|1|"),
        "write version 2 as configured: {snapshot}"
    );
}

/// Every unknown key and wrong type is reported at once, each with where
/// it was set (before, only the first: one run of `config check` per
/// mistake); a syntax error stops at itself.
#[test]
fn every_unknown_key_and_wrong_type_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[replication.log]\ndurability = \"sometimes\"\ninterval_ms = \"soon\"\n\
         [replication.sinks.a]\ntype = \"file\"\nmode = \"requird\"\nbogus = 1\n\
         [server]\nlisten = 5\n",
    );
    let errs = config::load_with(Some(&file), &env(&[("OMNIRELAY_SERVER__TOKEN", "5")]))
        .unwrap_err()
        .0;
    let at = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("nothing at {path}: {errs:?}"))
    };
    assert_eq!(errs.len(), 6, "{errs:?}");
    assert!(
        at("replication.log.durability")
            .message
            .contains("`sometimes`")
    );
    assert!(
        at("replication.log.interval_ms")
            .message
            .contains("\"soon\"")
    );
    assert!(at("replication.sinks.a.mode").message.contains("`requird`"));
    assert!(
        at("replication.sinks.a.bogus")
            .message
            .starts_with("unknown key")
    );
    assert_eq!(at("server.listen").origin, file.display().to_string());
    assert_eq!(
        at("server.token").origin,
        "environment variable OMNIRELAY_SERVER__TOKEN"
    );

    let broken = write(dir.path(), "[server\nlisten = 1\nbogus = 2\n");
    let errs = config::load_with(Some(&broken), &[]).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].message.contains("line 1"), "{errs:?}");
}

/// `load_lenient` hands back what parsed beside what did not: the keys
/// found wrong at their defaults, every other key as written, so that a
/// checker validates the rest in the same run; a syntax error leaves
/// nothing to validate.
#[test]
fn a_lenient_load_keeps_what_parsed_beside_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "data_dir = \"kept\"\n[replication.log]\ndurability = \"sometimes\"\ninterval_ms = 7\n\
         [replication.sinks.a]\ntype = \"nope\"\nbogus = 1\n",
    );
    let (loaded, errors) = config::load_lenient(Source::File(&file), &[], &[]);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["replication.log.durability", "replication.sinks.a.bogus"],
        "{errors:?}"
    );
    let loaded = loaded.expect("the rest parsed");
    assert_eq!(loaded.config.data_dir, std::path::Path::new("kept"));
    assert_eq!(loaded.config.replication.log.interval_ms, 7);
    // At its default, where it was wrong.
    assert_eq!(
        loaded.config.replication.log.durability,
        config::Config::default().replication.log.durability
    );
    // What only validation sees is still there to be seen.
    let invalid = loaded
        .validate(&SinkRegistry::discovered(), WireVersion::V2)
        .unwrap_err()
        .0;
    assert!(
        invalid
            .iter()
            .any(|e| e.path == "replication.sinks.a.type" && e.message.contains("\"nope\"")),
        "{invalid:?}"
    );
    assert!(config::load_from(Source::File(&file), &[], &[]).is_err());

    let broken = write(dir.path(), "[server\nlisten = 1\n");
    let (loaded, errors) = config::load_lenient(Source::File(&broken), &[], &[]);
    assert!(loaded.is_none());
    assert_eq!(errors.len(), 1, "{errors:?}");
}
