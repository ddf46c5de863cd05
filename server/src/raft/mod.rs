//! Raft, through openraft: the type configuration, the log store on kvd's WAL,
//! the state machine adapter over Apply, and the peer network.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A raft command: an encoded `etcdserverpb.InternalRaftRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cmd(pub Bytes);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({} bytes)", self.0.len())
    }
}

/// A cluster member as raft knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

openraft::declare_raft_types!(
    /// kvd's raft types: u64 member ids, etcd-style members, encoded requests.
    pub TypeConfig:
        D = Cmd,
        R = (),
        NodeId = u64,
        Node = Member,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
/// A raft snapshot's data. The state machine *is* the backend, so a snapshot
/// taken on this member is a handle to it: it is exported from one consistent
/// read when a peer needs it, and may then be newer than its metadata says,
/// which is safe because apply skips entries at or below the backend's
/// consistent index. A snapshot received from a leader is a file.
#[derive(Debug, Clone)]
pub enum SnapshotData {
    Local(std::sync::Arc<crate::backend::Backend>),
    Received(std::path::PathBuf),
}

/// Meta key of the membership a restored data dir bootstraps raft with on
/// its first start (`kvctl snapshot restore` writes it, as `etcdutl
/// snapshot restore` writes the membership into the restored member).
pub const BOOTSTRAP_MEMBERS: &[u8] = b"bootstrap_members";

/// postcard encoding for raft structures stored in the WAL and the backend.
pub fn encode<T: Serialize>(v: &T) -> Bytes {
    // Sized first: grown as it was written, the vector of an entry was
    // reallocated a few times per put.
    let size = postcard::experimental::serialized_size(v).unwrap_or(0);
    let out = postcard::to_extend(v, Vec::with_capacity(size));
    Bytes::from(out.expect("serializing raft state to memory cannot fail"))
}

pub fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests;
