//! Compiles the etcd v3 compatible `.proto` files under `proto/` with the pure-Rust
//! `protox` compiler (no system `protoc`), then generates prost messages and tonic
//! client/server stubs from the resulting descriptor set.

use std::{env, fs, path::PathBuf};

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "membershippb/membership.proto",
    "etcdserverpb/rpc.proto",
    "etcdserverpb/raft_internal.proto",
    "v3electionpb/v3election.proto",
    "v3lockpb/v3lock.proto",
    "kvdpeerpb/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{proto}");
    }

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("kvd_api_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        // prost's codec, but a too-deep request gets etcd's error (src/codec.rs).
        .codec_path("crate::codec::EtcdCodec")
        // Forwarded writes are `Bytes`: a batch is kept (not copied) for the
        // one-by-one fallback, and the leader proposes what it decoded as is.
        .bytes(".kvdpeerpb.ForwardRequest.request")
        .bytes(".kvdpeerpb.ForwardBatchRequest.requests")
        // A snapshot's pieces are handed to the encoder as read, not copied.
        .bytes(".etcdserverpb.SnapshotResponse.blob")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
