//! `[services.controlplane]`: hosts and the authority for `https://` ones.

use omnirelay_controlplane::settings::{check_host, parse};
use omnirelay_controlplane::{ControlPlane, Options};
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
