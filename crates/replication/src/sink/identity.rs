//! Which file a path named when a sink opened it: for sinks that write
//! files an operator may remove or rename under them (cleaning up, a
//! rotation by rename), so that they notice instead of writing on into a
//! file no reader will see again.

use std::io;
use std::path::Path;

/// A file as its file system knows it (device and inode on Unix), taken
/// when a sink opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    #[cfg(unix)]
    device: u64,
    #[cfg(unix)]
    inode: u64,
}

impl FileIdentity {
    /// The identity of the file whose metadata is `metadata` (of an open
    /// handle, or of a path just opened).
    pub fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            Self {
                device: metadata.dev(),
                inode: metadata.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            Self {}
        }
    }

    /// The identity of the file `path` names now, `None` when it names
    /// none.
    ///
    /// # Errors
    ///
    /// Any error of `stat` but a missing file.
    pub fn at(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::metadata(path) {
            Ok(metadata) => Ok(Some(Self::of(&metadata))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `path` still names this file: `false` once it was removed,
    /// renamed away or replaced. Where files in use cannot be removed or
    /// renamed (not Unix), always `true`.
    ///
    /// # Errors
    ///
    /// As [`FileIdentity::at`].
    pub fn named_by(&self, path: &Path) -> io::Result<bool> {
        if cfg!(not(unix)) {
            return Ok(true);
        }
        Ok(Self::at(path)? == Some(*self))
    }

    /// Whether the open file whose metadata is `metadata` has no name left
    /// (it was removed, not renamed): what went into it is lost to every
    /// reader once it is closed.
    pub fn unlinked(metadata: &std::fs::Metadata) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            metadata.nlink() == 0
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FileIdentity;

    #[test]
    fn a_path_names_its_file_until_removed_renamed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        assert_eq!(FileIdentity::at(&path).unwrap(), None);
        let file = std::fs::File::create(&path).unwrap();
        let opened = FileIdentity::of(&file.metadata().unwrap());
        assert!(opened.named_by(&path).unwrap());
        assert!(!FileIdentity::unlinked(&file.metadata().unwrap()));

        std::fs::rename(&path, dir.path().join("archived")).unwrap();
        assert!(!opened.named_by(&path).unwrap());
        assert!(!FileIdentity::unlinked(&file.metadata().unwrap()));

        std::fs::write(&path, b"another").unwrap();
        assert!(!opened.named_by(&path).unwrap(), "replaced");

        std::fs::remove_file(dir.path().join("archived")).unwrap();
        assert!(FileIdentity::unlinked(&file.metadata().unwrap()));
    }
}
