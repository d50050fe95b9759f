//! `[services.controlplane]`: hosts (each with its own token and authority
//! when it needs them) and the authority for `https://` ones.

use omnirelay_controlplane::settings::{check_host, parse};
use omnirelay_controlplane::{ControlPlane, HostAccess, Options};
use serde_json::json;

#[test]
fn hosts_are_http_or_https_urls() {
    assert!(check_host("http://node-a:7400").is_ok());
    assert!(check_host("https://node-a:7400/").is_ok());
    let error = check_host("ftp://node-a").unwrap_err();
    assert!(error.contains("not an http:// or https:// URL"), "{error}");
    assert!(
        check_host("https://")
            .unwrap_err()
            .contains("names no host")
    );
    let error = parse(Some(&json!({"hosts": ["http://a:1", "node-b:2"]}))).unwrap_err();
    assert_eq!(error.path, "hosts[1]");
}

#[test]
fn the_authority_file_is_read_as_given() {
    let settings = parse(Some(&json!({
        "hosts": ["https://node-a:7400"],
        "ca_file": "/etc/omnirelay/ca.pem",
    })))
    .unwrap();
    assert_eq!(
        settings.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/omnirelay/ca.pem"))
    );
    assert_eq!(settings.options.hosts, vec!["https://node-a:7400"]);
    assert_eq!(settings.options.ca_pem, None, "the caller reads the file");
    assert_eq!(parse(None).unwrap().ca_file, None);
    let error = parse(Some(&json!({"ca_file": ""}))).unwrap_err();
    assert_eq!(error.path, "ca_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_that_is_no_certificate_stops_the_start() {
    for (pem, why) in [
        (&b"not a certificate"[..], "no PEM certificate"),
        (
            &b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n"[..],
            "not PEM",
        ),
    ] {
        let options = Options {
            ca_pem: Some(pem.to_vec()),
            ..Options::new(vec!["https://localhost:1".to_owned()])
        };
        let error = ControlPlane::start(options, None).unwrap_err();
        assert!(error.contains(why), "{error}");
    }
}

#[test]
fn a_host_can_have_its_own_token_and_authority() {
    let settings = parse(Some(&json!({
        "hosts": [
            "http://node-a:7400",
            {"url": "https://node-b:7400/", "token": "b-secret", "ca_file": "/etc/omnirelay/b.pem"},
            {"url": "http://node-c:7400", "token": "c-secret"},
        ],
        "token": "shared",
    })))
    .unwrap();
    let options = &settings.options;
    assert_eq!(
        options.hosts,
        vec![
            "http://node-a:7400",
            "https://node-b:7400",
            "http://node-c:7400"
        ]
    );
    assert_eq!(options.token.as_deref(), Some("shared"));
    assert_eq!(options.access.get("http://node-a:7400"), None);
    assert_eq!(
        options.access["https://node-b:7400"].token.as_deref(),
        Some("b-secret")
    );
    assert_eq!(
        options.access["http://node-c:7400"].token.as_deref(),
        Some("c-secret")
    );
    assert_eq!(
        settings.host_ca_files,
        vec![(
            "https://node-b:7400".to_owned(),
            "hosts[1].ca_file".to_owned(),
            std::path::PathBuf::from("/etc/omnirelay/b.pem")
        )]
    );
    for (host, path, why) in [
        (
            json!({"url": "http://b:2", "tokn": "x"}),
            "hosts[0]",
            "unknown field `tokn`",
        ),
        (json!({"token": "x"}), "hosts[0]", "missing field `url`"),
        (json!({"url": "b:2"}), "hosts[0].url", "not an http"),
        (
            json!({"url": "http://b:2", "token": ""}),
            "hosts[0].token",
            "must not be empty",
        ),
        (
            json!({"url": "http://b:2", "ca_file": ""}),
            "hosts[0].ca_file",
            "must not be empty",
        ),
        (json!(7), "hosts[0]", "a host is a URL, or a table"),
    ] {
        let error = parse(Some(&json!({ "hosts": [host] }))).unwrap_err();
        assert!(error.path.starts_with(path), "{host}: {}", error.path);
        assert!(error.message.contains(why), "{host}: {}", error.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_own_authority_is_no_certificate_stops_the_start() {
    let mut options = Options::new(vec![
        "https://localhost:1".to_owned(),
        "https://localhost:2".to_owned(),
    ]);
    options.access.insert(
        "https://localhost:2".to_owned(),
        HostAccess {
            token: None,
            ca_pem: Some(b"not a certificate".to_vec()),
        },
    );
    let error = ControlPlane::start(options, None).unwrap_err();
    assert!(error.starts_with("https://localhost:2: "), "{error}");
    assert!(error.contains("no PEM certificate"), "{error}");
}
