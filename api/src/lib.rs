//! etcd v3 wire-compatible protobuf messages and gRPC stubs for kvd.
//!
//! Generated at build time from `api/proto/` (compiled with `protox`, no system
//! `protoc`). Package, service, method, message and field names and numbers match
//! etcd 3.6/3.7, so etcd clients (etcdctl, Go clientv3, kube-apiserver) can talk to
//! kvd's services. Each module contains the prost messages, plus `*_server` and
//! `*_client` modules for every service of that package.

pub mod client;
pub mod codec;

/// `mvccpb`: `KeyValue` and watch `Event`.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `authpb`: stored users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// `membershippb`: membership requests carried in `InternalRaftRequest`.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod membershippb {
    tonic::include_proto!("membershippb");
}

/// `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth services
/// and `InternalRaftRequest`.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// `v3electionpb`: the Election service.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// `v3lockpb`: the Lock service.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every file above (with source
/// info), for gRPC server reflection or a JSON gateway.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kvd_api_descriptor.bin"));

/// `kvdpeerpb`: kvd's own peer protocol (raft traffic and forwarding between
/// members); not part of etcd's API.
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs, rustdoc::all)]
pub mod kvdpeerpb {
    tonic::include_proto!("kvdpeerpb");
}
