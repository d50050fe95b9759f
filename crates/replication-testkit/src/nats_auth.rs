//! NATS servers that want credentials, as deployments run them: nkey users,
//! and decentralized authentication (an operator, accounts and users,
//! each a JWT signed with real nkeys, as `nsc` makes them). Each writes the
//! server's configuration (for `nats-server -c`) and what a client
//! presents.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// A server configuration and what its clients present.
#[derive(Debug)]
pub struct ServerAuth {
    /// The configuration file, for `nats-server -c`.
    pub config: PathBuf,
    /// What an allowed client presents: a `.creds` file (decentralized
    /// authentication) or a file holding an nkey seed (nkey users).
    pub allowed: PathBuf,
    /// The same kind of file for a client the server does not know: a
    /// user of another operator, or another nkey.
    pub stranger: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

fn seed(key: &KeyPair) -> String {
    key.seed()
        .unwrap_or_else(|e| panic!("a fresh key has a seed: {e}"))
}

/// A server whose one user authenticates with an nkey: `allowed` and
/// `stranger` hold nkey seeds (`SU…`).
///
/// # Panics
///
/// When a file cannot be written.
pub fn nkey_user(dir: &Path) -> ServerAuth {
    let user = KeyPair::new_user();
    let config = format!(
        "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    );
    ServerAuth {
        config: write(dir, "nkey-server.conf", &config),
        allowed: write(dir, "user.nk", &format!("{}\n", seed(&user))),
        stranger: write(dir, "stranger.nk", &seed(&KeyPair::new_user())),
    }
}

/// A JWT of `claims`, issued by `issuer` (who signs it) about `subject`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({
        "jti": format!("{subject}{issued}"),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{claims}");
    let signature = issuer
        .sign(signed.as_bytes())
        .unwrap_or_else(|e| panic!("signing a JWT: {e}"));
    format!("{signed}.{}", encode(&signature))
}

/// An account's JWT, with JetStream and no other limit.
fn account_jwt(operator: &KeyPair, account: &KeyPair, name: &str) -> String {
    jwt(
        operator,
        &account.public_key(),
        name,
        json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
            },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2
        }),
    )
}

/// A `.creds` file's text for a new user of `account`.
fn user_creds(account: &KeyPair) -> String {
    let user = KeyPair::new_user();
    let token = jwt(
        account,
        &user.public_key(),
        "omnirelay",
        json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        }),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        seed(&user)
    )
}

/// A server in operator mode (decentralized authentication): it trusts
/// one operator, whose account `omnirelay` has JetStream; `allowed` and
/// `stranger` are `.creds` files, the stranger's a user of an account of
/// another operator.
///
/// # Panics
///
/// When a file cannot be written.
pub fn operator_mode(dir: &Path) -> ServerAuth {
    let operator = KeyPair::new_operator();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        json!({ "type": "operator", "version": 2 }),
    );
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let config = format!(
        "operator: \"{}\"\nsystem_account: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
        write(dir, "operator.jwt", &operator_jwt).display(),
        system.public_key(),
        system.public_key(),
        jwt(
            &operator,
            &system.public_key(),
            "SYS",
            json!({ "type": "account", "version": 2 })
        ),
        account.public_key(),
        account_jwt(&operator, &account, "omnirelay"),
    );
    let elsewhere = KeyPair::new_account();
    ServerAuth {
        config: write(dir, "operator-server.conf", &config),
        allowed: write(dir, "user.creds", &user_creds(&account)),
        stranger: write(dir, "stranger.creds", &user_creds(&elsewhere)),
    }
}
