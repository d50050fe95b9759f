//! Generates the reference's `ResourceLeaseReplicatorGrpc` service (client
//! and server) from the contract in `omnirelay-resourcelease`, with a
//! pure-Rust protobuf compiler (no system `protoc`). The messages are the
//! schema crate's own (`extern_path`), so there is one set of types.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = "../resourcelease/proto";
    let proto = "../resourcelease/proto/resource_lease_replication.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], [dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(
            ".omnirelay.dispatcher.replication",
            "::omnirelay_resourcelease::proto::pb",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
