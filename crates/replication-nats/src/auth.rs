//! What the NATS sink, source and follower present to a server that wants
//! credentials, and the authority they trust when it speaks TLS.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;
use omnirelay_replication::{Error, ErrorKind};

/// Credentials for a NATS server: a token, a user and password, a `.creds`
/// file (decentralized authentication: a user JWT and its nkey seed, as
/// `nsc` writes them) or a file holding a user's nkey seed (nkey users).
/// The files are read when connecting.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    /// A token (`nats://TOKEN@HOST:PORT`).
    Token(String),
    /// A user and password (`nats://USER:PASSWORD@HOST:PORT`).
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A `.creds` file.
    CredentialsFile(PathBuf),
    /// A file holding an nkey seed (`SU…`).
    NkeySeedFile(PathBuf),
}

impl std::fmt::Debug for NatsCredentials {
    /// Never shows a secret (the files' paths are no secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(***)"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Self::CredentialsFile(path) => f.debug_tuple("CredentialsFile").field(path).finish(),
            Self::NkeySeedFile(path) => f.debug_tuple("NkeySeedFile").field(path).finish(),
        }
    }
}

impl NatsCredentials {
    /// `options` presenting these credentials.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when a file cannot be read or does not hold
    /// what it should (never showing its contents).
    pub fn present(&self, options: ConnectOptions) -> Result<ConnectOptions, Error> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read_to_string(path).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot read the NATS {what} {}: {e}", path.display()),
                )
            })
        };
        match self {
            Self::Token(token) => Ok(options.token(token.clone())),
            Self::UserPassword { user, password } => {
                Ok(options.user_and_password(user.clone(), password.clone()))
            }
            Self::CredentialsFile(path) => options
                .credentials(&read(path, "credentials file")?)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!(
                            "{} is not a NATS credentials file (a user JWT and its nkey seed, as nsc writes them): {e}",
                            path.display()
                        ),
                    )
                }),
            Self::NkeySeedFile(path) => {
                let text = read(path, "nkey seed file")?;
                let seed = text.trim();
                let bad = |why: &str| {
                    Error::new(
                        ErrorKind::Config,
                        format!("{} does not hold a user's nkey seed: {why}", path.display()),
                    )
                };
                if !seed.starts_with("SU") {
                    return Err(bad("a user's seed starts with SU"));
                }
                nkeys::KeyPair::from_seed(seed).map_err(|e| bad(&e.to_string()))?;
                Ok(options.nkey(seed.to_owned()))
            }
        }
    }
}

/// `options` requiring TLS and trusting the authority (or authorities)
/// whose PEM certificates `ca_file` holds, for a server whose certificate
/// no system root vouches for. The file is checked now and read again when
/// connecting.
///
/// # Errors
///
/// [`ErrorKind::Config`] when the file cannot be read or holds no PEM
/// certificate.
pub fn trust_authority(options: ConnectOptions, ca_file: &Path) -> Result<ConnectOptions, Error> {
    let bad = |why: String| Error::new(ErrorKind::Config, format!("the NATS CA file {why}"));
    let pem = std::fs::read(ca_file)
        .map_err(|e| bad(format!("{} cannot be read: {e}", ca_file.display())))?;
    let certificates = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{} is not PEM: {e}", ca_file.display())))?;
    if certificates.is_empty() {
        return Err(bad(format!(
            "{} holds no PEM certificate",
            ca_file.display()
        )));
    }
    Ok(options
        .add_root_certificates(ca_file.to_owned())
        .require_tls(true))
}

/// `servers` as addresses to connect to; `who` (`nats`, `nats source`)
/// begins the error.
///
/// # Errors
///
/// [`ErrorKind::Config`] naming the first address that does not read.
pub(crate) fn server_addresses(
    servers: &[String],
    who: &str,
) -> Result<Vec<async_nats::ServerAddr>, Error> {
    servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| Error::new(ErrorKind::Config, format!("{who}: server {s:?}: {e}")))
        })
        .collect()
}
