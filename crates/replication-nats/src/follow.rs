//! A follower's address on the bus: servers, credentials, stream, subject
//! and durable consumer in one `nats://` URL.

use async_nats::ConnectOptions;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use omnirelay_replication::{Error, ErrorKind, StreamId};

use crate::auth::{NatsCredentials, server_addresses, trust_authority};
use crate::source::NatsSourceOptions;
use crate::subject::{header, subject_for, validate_stream_name, validate_subject_template};

/// A follower's address on the bus:
/// `nats://[CREDENTIALS@]HOST:PORT[,HOST:PORT…][?stream=NAME&subject=TEMPLATE&durable=NAME]`,
/// where `CREDENTIALS` is `USER:PASSWORD` or a `TOKEN` (percent-encoded
/// where they hold `@`, `:`, `%` or `/`), as NATS clients write them; or,
/// instead, the parameter `credentials_file=PATH` (a `.creds` file:
/// decentralized authentication) or `nkey_seed_file=PATH` (a file holding
/// a user's nkey seed), as the NATS sink's settings of those names; and
/// `ca_file=PATH` to require TLS and trust the authority in that PEM file,
/// as the sink's `ca_file`; and `reorder_wait_ms=N`, how long a message
/// waits for the one published before it
/// ([`NatsSourceOptions::reorder_wait`], at most a day). The
/// stream and subject default to the NATS sink's defaults; the durable
/// consumer (the follower's position, kept by JetStream) to the name the
/// follower passes — two followers of one stream need two names.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowUrl {
    /// `nats://HOST:PORT`, one per server.
    pub servers: Vec<String>,
    /// What to present to the servers, if anything.
    pub credentials: Option<NatsCredentials>,
    /// The PEM file of the authority to trust (TLS required), if any.
    pub ca_file: Option<std::path::PathBuf>,
    /// The stream, subject and consumer.
    pub options: NatsSourceOptions,
}

/// The longest `reorder_wait_ms` a follow address may set: a day.
const MAX_REORDER_WAIT_MS: u64 = 24 * 60 * 60 * 1000;

/// Splits `nats://…` into its credentials (if any), its servers and its
/// query; `None` when it is not `nats://`.
fn parts(url: &str) -> Option<(Option<&str>, &str, &str)> {
    if !FollowUrl::is_nats(url) {
        return None;
    }
    let (authority, query) = url[7..].split_once('?').unwrap_or((&url[7..], ""));
    Some(match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts, query),
        None => (None, authority, query),
    })
}

/// `text` with its `%XX` escapes decoded; `None` for a bad escape or
/// bytes that are not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes.get(at + 1..at + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl FollowUrl {
    /// Whether `url` names the bus (`nats://…`) rather than a node.
    pub fn is_nats(url: &str) -> bool {
        url.get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("nats://"))
    }

    /// `url` fit to show: its password or token replaced by `***`.
    pub fn redacted(url: &str) -> String {
        match parts(url) {
            Some((Some(credentials), hosts, query)) => {
                let shown = match credentials.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => "***".to_owned(),
                };
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                format!("{}{shown}@{hosts}{query}", &url[..7])
            }
            _ => url.to_owned(),
        }
    }

    /// Reads `url`; `durable` is the consumer's name unless the URL sets it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`], naming what is wrong (and never the secret):
    /// not `nats://`, no server, empty or badly escaped credentials, an
    /// unknown or empty parameter, an invalid stream, subject or consumer
    /// name.
    pub fn parse(url: &str, durable: &str) -> Result<Self, Error> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::Config,
                format!("follow address {}: {why}", Self::redacted(url)),
            )
        };
        let Some((credentials, hosts, query)) = parts(url) else {
            return Err(bad("expected nats://HOST:PORT".to_owned()));
        };
        let credentials = credentials
            .map(|text| {
                let decoded = |part: &str, what: &str| match percent_decoded(part) {
                    Some(value) if !value.is_empty() => Ok(value),
                    Some(_) => Err(bad(format!("empty {what}"))),
                    None => Err(bad(format!("the {what} has a bad %-escape"))),
                };
                Ok::<_, Error>(match text.split_once(':') {
                    Some((user, password)) => NatsCredentials::UserPassword {
                        user: decoded(user, "user")?,
                        password: decoded(password, "password")?,
                    },
                    None => NatsCredentials::Token(decoded(text, "token")?),
                })
            })
            .transpose()?;
        let servers: Vec<String> = hosts
            .trim_end_matches('/')
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("nats://{h}"))
            .collect();
        if servers.is_empty() {
            return Err(bad("no server: expected nats://HOST:PORT".to_owned()));
        }
        let mut options = NatsSourceOptions::new(durable);
        let mut credentials = credentials;
        let mut ca_file = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if value.is_empty() {
                return Err(bad(format!("{key} needs a value")));
            }
            let file = || {
                percent_decoded(value)
                    .map(std::path::PathBuf::from)
                    .ok_or_else(|| bad(format!("{key} has a bad %-escape")))
            };
            let given = match key {
                "stream" => {
                    value.clone_into(&mut options.stream);
                    None
                }
                "subject" => {
                    value.clone_into(&mut options.subject);
                    None
                }
                "durable" => {
                    value.clone_into(&mut options.durable);
                    None
                }
                "credentials_file" => Some(NatsCredentials::CredentialsFile(file()?)),
                "nkey_seed_file" => Some(NatsCredentials::NkeySeedFile(file()?)),
                "ca_file" => {
                    ca_file = Some(file()?);
                    None
                }
                "reorder_wait_ms" => {
                    options.reorder_wait = value
                        .parse()
                        .ok()
                        .filter(|ms| *ms <= MAX_REORDER_WAIT_MS)
                        .map(std::time::Duration::from_millis)
                        .ok_or_else(|| {
                            bad(format!(
                                "reorder_wait_ms: expected milliseconds from 0 to {MAX_REORDER_WAIT_MS}, found {value:?}"
                            ))
                        })?;
                    None
                }
                _ => {
                    return Err(bad(format!(
                        "unknown parameter {key:?} (stream, subject, durable, credentials_file, nkey_seed_file, ca_file, reorder_wait_ms)"
                    )));
                }
            };
            if given.is_some() {
                if credentials.is_some() {
                    return Err(bad(
                        "more than one kind of credentials: give a user and password, a token, credentials_file or nkey_seed_file"
                            .to_owned(),
                    ));
                }
                credentials = given;
            }
        }
        validate_stream_name(&options.stream)
            .map_err(|e| bad(format!("stream: {}", e.message())))?;
        validate_subject_template(&options.subject)
            .map_err(|e| bad(format!("subject: {}", e.message())))?;
        // Consumer names follow the stream names' rules.
        validate_stream_name(&options.durable)
            .map_err(|e| bad(format!("durable: {}", e.message())))?;
        Ok(Self {
            servers,
            credentials,
            ca_file,
            options,
        })
    }

    /// The client's connect options: a name, the authority, and the
    /// credentials.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions, Error> {
        let mut options = ConnectOptions::new().name("omnirelay-follower");
        if let Some(ca_file) = &self.ca_file {
            options = trust_authority(options, ca_file)?;
        }
        match &self.credentials {
            None => Ok(options),
            Some(credentials) => credentials.present(options),
        }
    }

    /// Who wrote the newest message of `stream` on the followed subject
    /// (its `Omnirelay-Writer` header: the publishing node's name): what a
    /// standby fed from the bus takes for its own name before its sinks
    /// start (see [`adopt_node_name`](omnirelay_replication::node::adopt_node_name)).
    /// `None` when the subject holds no message yet, or its newest carries
    /// no writer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] when the servers or the JetStream stream
    /// cannot be reached; [`ErrorKind::Config`] as [`FollowUrl::parse`]'s
    /// files.
    pub async fn last_writer(&self, stream: &StreamId) -> Result<Option<String>, Error> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::Unavailable,
                format!("nats follower: {what}: {e}"),
            )
        };
        let addresses = server_addresses(&self.servers, "nats follower")?;
        let client = self
            .connect_options()?
            .connect(addresses)
            .await
            .map_err(|e| unavailable("connect", &e))?;
        let js_stream = async_nats::jetstream::new(client)
            .get_stream(&self.options.stream)
            .await
            .map_err(|e| unavailable(&format!("find stream {}", self.options.stream), &e))?;
        let subject = subject_for(&self.options.subject, stream.as_str());
        match js_stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => Ok(message
                .headers
                .get(header::WRITER)
                .map(|v| v.as_str().to_owned())),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(
                &format!("read the last message on {subject}"),
                &e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_follow_url_names_servers_stream_subject_and_consumer() {
        assert!(FollowUrl::is_nats("NATS://h:1") && !FollowUrl::is_nats("http://h:1"));
        let plain = FollowUrl::parse("nats://127.0.0.1:4222", "standby-a").unwrap();
        assert_eq!(plain.servers, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(plain.credentials, None);
        assert_eq!(plain.options, NatsSourceOptions::new("standby-a"));
        let full = FollowUrl::parse(
            "nats://a:1,b:2/?stream=EU&subject=eu.{stream}&durable=standby-b",
            "ignored",
        )
        .unwrap();
        assert_eq!(full.servers, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(
            (
                full.options.stream.as_str(),
                full.options.subject.as_str(),
                full.options.durable.as_str()
            ),
            ("EU", "eu.{stream}", "standby-b")
        );
        assert_eq!(full.options.reorder_wait, Duration::from_secs(60));
        let patient = FollowUrl::parse("nats://a:1?reorder_wait_ms=600000", "d").unwrap();
        assert_eq!(patient.options.reorder_wait, Duration::from_secs(600));
        let eager = FollowUrl::parse("nats://a:1?reorder_wait_ms=0", "d").unwrap();
        assert_eq!(eager.options.reorder_wait, Duration::ZERO);
        for (url, why) in [
            ("http://a:1", "expected nats://"),
            ("nats://", "no server"),
            ("nats://a:1?stream=", "stream needs a value"),
            ("nats://a:1?queue=x", "unknown parameter \"queue\""),
            ("nats://a:1?durable=a.b", "durable: invalid"),
            ("nats://a:1?subject=x.y", "subject: "),
            (
                "nats://a:1?reorder_wait_ms=soon",
                "reorder_wait_ms: expected milliseconds",
            ),
            (
                "nats://a:1?reorder_wait_ms=-1",
                "reorder_wait_ms: expected milliseconds",
            ),
            (
                "nats://a:1?reorder_wait_ms=86400001",
                "from 0 to 86400000, found \"86400001\"",
            ),
        ] {
            let err = FollowUrl::parse(url, "d").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn credentials_come_from_the_user_part_and_never_show() {
        let user =
            FollowUrl::parse("nats://standby:p%40ss%3Aw%25rd@a:1,b:2?stream=EU", "d").unwrap();
        assert_eq!(user.servers, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(
            user.credentials,
            Some(NatsCredentials::UserPassword {
                user: "standby".to_owned(),
                password: "p@ss:w%rd".to_owned(),
            })
        );
        assert_eq!(user.options.stream, "EU");
        let token = FollowUrl::parse("nats://s3cr3t@a:1", "d").unwrap();
        assert_eq!(
            token.credentials,
            Some(NatsCredentials::Token("s3cr3t".to_owned()))
        );
        // A password with an unescaped `@` still parses: hosts have none.
        let at = FollowUrl::parse("nats://u:p@ss@a:1", "d").unwrap();
        assert_eq!(at.servers, vec!["nats://a:1"]);
        assert!(!format!("{user:?}{token:?}{at:?}").contains("s3cr3t"));
        assert!(!format!("{user:?}{at:?}").contains("p@ss"));
        assert_eq!(
            FollowUrl::redacted("nats://standby:p%40ss@a:1?stream=EU"),
            "nats://standby:***@a:1?stream=EU"
        );
        assert_eq!(FollowUrl::redacted("nats://s3cr3t@a:1"), "nats://***@a:1");
        assert_eq!(FollowUrl::redacted("nats://a:1"), "nats://a:1");
        assert_eq!(FollowUrl::redacted("http://u:p@a:1"), "http://u:p@a:1");
        for (url, why) in [
            ("nats://:secret@a:1", "empty user"),
            ("nats://u:@a:1", "empty password"),
            ("nats://@a:1", "empty token"),
            ("nats://u:secret%zz@a:1", "the password has a bad %-escape"),
            ("nats://u:secret%+f@a:1", "the password has a bad %-escape"),
            ("nats://u:secret%ff@a:1", "the password has a bad %-escape"),
            ("nats://u:secret@a:1?queue=x", "unknown parameter"),
        ] {
            let err = FollowUrl::parse(url, "d").unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }

    #[test]
    fn credentials_and_seed_files_come_from_parameters() {
        let creds = FollowUrl::parse(
            "nats://a:1?stream=EU&credentials_file=/etc/nats/standby%20a.creds",
            "d",
        )
        .unwrap();
        assert_eq!(
            creds.credentials,
            Some(NatsCredentials::CredentialsFile(
                "/etc/nats/standby a.creds".into()
            ))
        );
        assert_eq!(creds.options.stream, "EU");
        let seed = FollowUrl::parse("nats://a:1?nkey_seed_file=standby.nk", "d").unwrap();
        assert_eq!(
            seed.credentials,
            Some(NatsCredentials::NkeySeedFile("standby.nk".into()))
        );
        assert_eq!(seed.ca_file, None);
        // The authority goes with any credentials.
        let trusting = FollowUrl::parse(
            "nats://u:p@a:1?ca_file=/etc/nats/ca%20bundle.pem&stream=EU",
            "d",
        )
        .unwrap();
        assert_eq!(trusting.ca_file, Some("/etc/nats/ca bundle.pem".into()));
        assert!(matches!(
            trusting.credentials,
            Some(NatsCredentials::UserPassword { .. })
        ));
        for (url, why) in [
            ("nats://u:secret@a:1?nkey_seed_file=x", "more than one kind"),
            (
                "nats://a:1?credentials_file=x&nkey_seed_file=y",
                "more than one kind",
            ),
            (
                "nats://a:1?credentials_file=%zz",
                "credentials_file has a bad %-escape",
            ),
            ("nats://a:1?nkey_seed_file=", "nkey_seed_file needs a value"),
            ("nats://a:1?ca_file=%g1", "ca_file has a bad %-escape"),
            ("nats://a:1?tls=yes", "unknown parameter \"tls\""),
        ] {
            let err = FollowUrl::parse(url, "d").unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }

    #[test]
    fn a_file_that_is_missing_or_holds_something_else_is_a_configuration_error() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let present = |credentials: NatsCredentials| {
            credentials
                .present(ConnectOptions::new())
                .map(|_| ())
                .unwrap_err()
        };
        let missing = present(NatsCredentials::NkeySeedFile(dir.join("gone.nk")));
        assert_eq!(missing.kind(), ErrorKind::Config);
        assert!(missing.to_string().contains("gone.nk"), "{missing}");
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        std::fs::write(dir.join("account.nk"), &account).unwrap();
        let not_user = present(NatsCredentials::NkeySeedFile(dir.join("account.nk")));
        assert!(
            not_user.to_string().contains("starts with SU"),
            "{not_user}"
        );
        assert!(!not_user.to_string().contains(&account), "{not_user}");
        std::fs::write(dir.join("garbled.nk"), "SUnot-a-seed").unwrap();
        let garbled = present(NatsCredentials::NkeySeedFile(dir.join("garbled.nk")));
        assert!(
            garbled
                .to_string()
                .contains("does not hold a user's nkey seed"),
            "{garbled}"
        );
        let not_creds = present(NatsCredentials::CredentialsFile(dir.join("account.nk")));
        assert!(
            not_creds
                .to_string()
                .contains("not a NATS credentials file"),
            "{not_creds}"
        );
        assert!(!not_creds.to_string().contains(&account), "{not_creds}");
        let user = nkeys::KeyPair::new_user().seed().unwrap();
        std::fs::write(dir.join("user.nk"), format!("{user}\n")).unwrap();
        assert!(
            NatsCredentials::NkeySeedFile(dir.join("user.nk"))
                .present(ConnectOptions::new())
                .is_ok()
        );
    }
}
