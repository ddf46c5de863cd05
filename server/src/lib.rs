//! kvd: an etcd-compatible, Raft-replicated key-value store.
//!
//! A write crosses the layers in this order (see ARCHITECTURE.md):
//! [`rpc`] → [`quota`] → [`etcdserver`] (preflight, proposal) → [`proposal`]
//! → [`raft`] → [`wal`] → [`apply`] → [`mvcc`] → [`backend`].

pub mod apply;
pub mod backend;
pub mod config;
pub mod etcdserver;
pub mod metrics;
pub mod mvcc;
pub mod proposal;
pub mod quota;
pub mod raft;
pub mod rpc;
pub mod snapshot;
pub mod telemetry;
pub mod wal;
