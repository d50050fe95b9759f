//! A node's name: who writes its log, as the sinks that send it elsewhere
//! tell their peers.
//!
//! Sinks that share a destination with other nodes (a receiver keeping one
//! high-water mark per sender, a bus subject several nodes could publish
//! to) need to tell this node's log from another's. The name is made once
//! per data directory and kept there, so a restarted node is the same
//! writer; a standby, whose log is its primary's, takes the primary's name
//! ([`adopt_node_name`]) so that what it sends is recognised as the same
//! log's, not a second writer's.

use std::path::Path;

use crate::{Error, ErrorKind};

/// The file under a node's data directory holding its name.
pub const NODE_NAME_FILE: &str = "node-name";

/// Where releases before the name was shared kept it (the `grpc` sink's
/// sender name): taken as the node's name when [`NODE_NAME_FILE`] is not
/// there yet.
const EARLIER_FILE: &str = "grpc-sender";

/// The name of the node whose data directory is `dir`: made once (`node-`
/// and 32 random hex digits), kept in [`NODE_NAME_FILE`] and read back on
/// every start, so that every node has its own and keeps it across
/// restarts. A node whose directory is lost gets a new name; its log starts
/// again at 1, which peers then take as a new writer's.
///
/// # Errors
///
/// [`ErrorKind::Unavailable`] when the file cannot be read or made.
pub fn node_name(dir: &Path) -> Result<String, Error> {
    let path = dir.join(NODE_NAME_FILE);
    if let Some(name) = read_name(&path).map_err(|e| unavailable("read", &path, e))? {
        return Ok(name);
    }
    let earlier = dir.join(EARLIER_FILE);
    let made = match read_name(&earlier).map_err(|e| unavailable("read", &earlier, e))? {
        Some(name) => name,
        None => format!("node-{}", uuid::Uuid::new_v4().simple()),
    };
    // The sinks of a node starting together agree on the first one linked.
    write_name(dir, &made, false).map_err(|e| unavailable("make", &path, e))?;
    read_name(&path)
        .map_err(|e| unavailable("read", &path, e))?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("node name: {} holds no name", path.display()),
            )
        })
}

/// Makes `name` the name of the node whose data directory is `dir` (see
/// [`node_name`]); whether it changed. A standby takes its primary's before
/// its sinks start: its log is the primary's, so its sinks send the same
/// events as the same writer — a peer has them already, instead of taking
/// them for a second copy or refusing a second writer — and, promoted, it
/// carries the stream on under that name.
///
/// # Errors
///
/// [`ErrorKind::Config`] for a name that is not printable ASCII;
/// [`ErrorKind::Unavailable`] when the file cannot be read or written.
pub fn adopt_node_name(dir: &Path, name: &str) -> Result<bool, Error> {
    if !is_node_name(name) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("node name: {name:?} is not a node name (printable ASCII)"),
        ));
    }
    let path = dir.join(NODE_NAME_FILE);
    if read_name(&path)
        .map_err(|e| unavailable("read", &path, e))?
        .as_deref()
        == Some(name)
    {
        return Ok(false);
    }
    write_name(dir, name, true).map_err(|e| unavailable("write", &path, e))?;
    Ok(true)
}

/// Whether `name` can be a node's name: printable ASCII, not empty (it
/// goes into request metadata and message headers as it is).
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
}

fn unavailable(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("node name: cannot {what} {}", path.display()),
    )
    .with_source(e)
}

/// The name in `path`: `None` when there is no file or no usable name.
fn read_name(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|name| is_node_name(name))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `name` whole and synced under another name, then puts it in
/// place (`replace`: over the file there; else only if there is none).
fn write_name(dir: &Path, name: &str, replace: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(NODE_NAME_FILE);
    let draft = dir.join(format!(
        "{NODE_NAME_FILE}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let made = (|| {
        let mut file = std::fs::File::create_new(&draft)?;
        std::io::Write::write_all(&mut file, format!("{name}\n").as_bytes())?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&draft, &path)?;
        } else {
            match std::fs::hard_link(&draft, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&draft);
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_makes_its_name_once_and_keeps_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let name = node_name(a.path()).unwrap();
        assert!(name.starts_with("node-") && name.len() == 37, "{name}");
        assert_eq!(node_name(a.path()).unwrap(), name, "kept");
        assert_ne!(node_name(b.path()).unwrap(), name, "another node's own");
        // Sinks of one node starting together agree on one name.
        let c = tempfile::tempdir().unwrap();
        let names: Vec<String> = std::thread::scope(|scope| {
            let made: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| node_name(c.path()).unwrap()))
                .collect();
            made.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
        let left: Vec<_> = std::fs::read_dir(c.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no draft left behind");
    }

    #[test]
    fn a_name_kept_as_the_grpc_sender_stays_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EARLIER_FILE), "node-earlier\n").unwrap();
        assert_eq!(node_name(dir.path()).unwrap(), "node-earlier");
        std::fs::remove_file(dir.path().join(EARLIER_FILE)).unwrap();
        assert_eq!(node_name(dir.path()).unwrap(), "node-earlier", "kept");
    }

    #[test]
    fn a_standby_takes_its_primarys_name_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let own = node_name(dir.path()).unwrap();
        assert!(adopt_node_name(dir.path(), "node-primary").unwrap());
        assert_eq!(node_name(dir.path()).unwrap(), "node-primary");
        assert!(
            !adopt_node_name(dir.path(), "node-primary").unwrap(),
            "unchanged"
        );
        assert_ne!(own, "node-primary");
        let err = adopt_node_name(dir.path(), "two words").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no draft left behind");
    }

    #[test]
    fn an_unreadable_name_file_is_an_error_not_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(NODE_NAME_FILE)).unwrap();
        let err = node_name(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    }
}
