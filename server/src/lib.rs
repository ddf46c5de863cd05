//! kvd: an etcd-compatible, Raft-replicated key-value store.
//!
//! A write crosses the layers in this order (see ARCHITECTURE.md):
//! [`rpc`] → [`quota`] → [`etcdserver`] (preflight, proposal) → [`proposal`]
//! → [`raft`] → [`wal`] → [`apply`] → [`mvcc`] → [`backend`].
//! Beside apply: [`lease`] (the lessor apply grants and revokes with) and
//! [`watch`] (apply hands it each revision's events).

/// kvd's version, as `/version` and `kvd --version` report it: the crate's,
/// unless the build sets `KVD_VERSION` (the e2e builds a second kvd that
/// reports another version, to upgrade to).
pub const VERSION: &str = match option_env!("KVD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod apply;
pub mod auth;
pub mod backend;
pub mod blocking;
pub mod config;
pub mod etcdserver;
pub mod failpoints;
pub mod fuzzing;
pub mod inflight;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod powercut;
pub mod proposal;
pub mod quota;
pub mod raft;
pub mod rpc;
pub mod snapshot;
pub mod sockets;
pub mod telemetry;
pub mod tls;
pub mod wal;
pub mod watch;
