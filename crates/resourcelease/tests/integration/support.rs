use std::path::{Path, PathBuf};

use omnirelay_replication::WireVersion;

/// A golden fixture: `fixtures/v<N>/<name>.json` and its protobuf twin
/// `<name>.binpb`.
pub(crate) struct Fixture {
    pub(crate) name: String,
    pub(crate) version: WireVersion,
    pub(crate) json: Vec<u8>,
    pub(crate) proto_path: PathBuf,
}

pub(crate) fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every JSON fixture of every version, sorted by path.
pub(crate) fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for (dir, version) in [("v1", WireVersion::V1), ("v2", WireVersion::V2)] {
        let mut paths: Vec<_> = std::fs::read_dir(fixture_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read(&path).unwrap();
            let json = text.trim_ascii_end().to_vec();
            out.push(Fixture {
                name: format!("{dir}/{}", path.file_stem().unwrap().to_string_lossy()),
                version,
                json,
                proto_path: path.with_extension("binpb"),
            });
        }
    }
    assert!(out.len() >= 17, "fixtures missing: found {}", out.len());
    out
}
