//! Compiles the protobuf contract with a pure-Rust compiler (protox), so the
//! build needs no system `protoc`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let proto = "proto/resource_lease_replication.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        // Deterministic map order, so that encoding is canonical.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
