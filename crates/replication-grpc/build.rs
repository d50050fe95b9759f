//! Generates the gRPC services (client and server) with a pure-Rust
//! protobuf compiler (no system `protoc`): the reference's
//! `ResourceLeaseReplicatorGrpc`, from the contract in
//! `omnirelay-resourcelease` (its messages are that crate's own, by
//! `extern_path`, so there is one set of types), and this crate's streaming
//! `omnirelay.replication.v2.Replication`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let reference_dir = "../resourcelease/proto";
    let reference = "../resourcelease/proto/resource_lease_replication.proto";
    let v2 = "proto/replication_v2.proto";
    println!("cargo:rerun-if-changed={reference}");
    println!("cargo:rerun-if-changed={v2}");
    let descriptors = protox::compile([reference, v2], [reference_dir, "proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".omnirelay.replication.v2")
        .extern_path(
            ".omnirelay.dispatcher.replication",
            "::omnirelay_resourcelease::proto::pb",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
