//! Certificates for servers on loopback.

use std::path::{Path, PathBuf};

/// Writes a self-signed certificate for `localhost` and `127.0.0.1`
/// (`cert.pem`, which is also the authority to trust) and its key
/// (`key.pem`) into `dir`; their paths.
///
/// # Panics
///
/// If the certificate cannot be made or written.
pub fn localhost_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap_or_else(|e| panic!("a certificate for localhost: {e}"));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    for (path, text) in [
        (&cert, certified.cert.pem()),
        (&key, certified.key_pair.serialize_pem()),
    ] {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    (cert, key)
}
