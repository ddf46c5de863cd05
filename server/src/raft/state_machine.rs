//! openraft's state machine over Apply.
//!
//! Committed entries are decoded and handed to the [`Applier`]; raft's applied
//! log id and membership are written as meta in the same backend transaction
//! as the entry's effects, so after a restart `applied_state` and the MVCC
//! data agree. Results go to the proposer through the `notify` callback, keyed
//! by the request id (etcd's wait registry), not through openraft responders.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use kvd_api::etcdserverpb::InternalRaftRequest;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, OptionalSend};
use prost::Message;

use super::{LogId, SnapshotData, StoredMembership, TypeConfig, decode, encode};
use crate::apply::{Applier, ApplyError, ApplyOutput};
use crate::backend::Table;
use crate::metrics;

/// Meta keys owned by the raft layer.
const APPLIED_LOG_ID: &[u8] = b"raft_applied_log_id";
const MEMBERSHIP: &[u8] = b"raft_membership";
const SNAPSHOT_META: &[u8] = b"raft_snapshot_meta";

/// Receives each applied request's result, keyed by request id.
pub type Notify = Arc<dyn Fn(u64, Result<ApplyOutput, ApplyError>) + Send + Sync>;

pub struct StateMachine {
    applier: Arc<Applier>,
    notify: Notify,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachine {
    pub fn new(applier: Arc<Applier>, notify: Notify) -> io::Result<Self> {
        let be = applier.store().backend().clone();
        let get = |k: &[u8]| be.get(Table::Meta, k).map_err(io::Error::other);
        let last_applied = match get(APPLIED_LOG_ID)? {
            Some(b) => decode(&b)?,
            None => None,
        };
        let membership = match get(MEMBERSHIP)? {
            Some(b) => decode(&b)?,
            None => StoredMembership::default(),
        };
        Ok(Self { applier, notify, last_applied, membership })
    }
}

impl StateMachine {
    /// The index of the last entry applied, as raft resumes from it (0 = none).
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map(|l| l.index()).unwrap_or(0)
    }

    /// A state machine over the same backend that knows only what its rows
    /// say, as after a restart.
    #[cfg(test)]
    pub(crate) fn reopened(&self) -> io::Result<Self> {
        Self::new(self.applier.clone(), self.notify.clone())
    }

    fn backend(&self) -> &Arc<crate::backend::Backend> {
        self.applier.store().backend()
    }

    /// The applied log id, when the backend is exactly the raft snapshot
    /// stored with it (nothing applied after the snapshot was taken or
    /// installed).
    pub fn snapshot_at_applied(&self) -> io::Result<Option<LogId>> {
        let snap = self.stored_snapshot_meta()?.and_then(|m| m.last_log_id);
        Ok(snap.filter(|s| Some(*s) == self.last_applied))
    }

    fn stored_snapshot_meta(&self) -> io::Result<Option<SnapshotMetaOf<TypeConfig>>> {
        match self.backend().get(Table::Meta, SNAPSHOT_META).map_err(io::Error::other)? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }
}

/// Raft's own rows (applied log id, membership) picked out of a backend's
/// records as they stream by: the metadata of a snapshot made of them.
#[derive(Default)]
pub struct RaftRows {
    applied: Option<Vec<u8>>,
    membership: Option<Vec<u8>>,
}

impl RaftRows {
    pub fn observe(&mut self, t: Table, k: &[u8], v: &[u8]) {
        if t != Table::Meta {
            return;
        }
        match k {
            APPLIED_LOG_ID => self.applied = Some(v.to_vec()),
            MEMBERSHIP => self.membership = Some(v.to_vec()),
            _ => {}
        }
    }

    /// The metadata that describes exactly the records observed.
    pub fn meta(&self) -> io::Result<SnapshotMetaOf<TypeConfig>> {
        let last_log_id: Option<LogId> = match &self.applied {
            Some(b) => decode(b)?,
            None => None,
        };
        let last_membership = match &self.membership {
            Some(b) => decode(b)?,
            None => StoredMembership::default(),
        };
        Ok(SnapshotMetaOf::<TypeConfig> { last_log_id, last_membership })
    }
}

/// A number no other snapshot file of this process has in its name (an
/// export whose send was cancelled may still be writing its file).
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Exports `be` into a snapshot file in `dir` named `name`, from one
/// consistent read; returns the file and the metadata of what it holds.
pub fn export(
    be: &crate::backend::Backend,
    dir: &std::path::Path,
    name: &str,
) -> io::Result<(std::path::PathBuf, SnapshotMetaOf<TypeConfig>)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let mut rows = RaftRows::default();
    crate::snapshot::write_observed(be, &path, |t, k, v| rows.observe(t, k, v)).map_err(io::Error::other)?;
    Ok((path, rows.meta()?))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// A raft snapshot is the backend made durable up to (at least) the last
    /// applied entry, plus its metadata; openraft then purges the log before it.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let meta =
            SnapshotMetaOf::<TypeConfig> { last_log_id: self.last_applied, last_membership: self.membership.clone() };
        let be = self.backend().clone();
        let encoded = encode(&meta);
        let at = meta.last_log_id;
        tokio::task::spawn_blocking(move || -> Result<(), crate::backend::BackendError> {
            // First everything applied so far, then the metadata that points into it.
            be.commit()?;
            // Not over a newer snapshot's (one installed from the leader
            // while this one was being built).
            let stored: Option<SnapshotMetaOf<TypeConfig>> =
                be.get(Table::Meta, SNAPSHOT_META)?.and_then(|b| decode(&b).ok());
            if stored.is_none_or(|s| s.last_log_id <= at) {
                be.write(|b| b.put(Table::Meta, SNAPSHOT_META.to_vec(), encoded));
            }
            be.commit()
        })
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
        tracing::info!(last_log_id = ?meta.last_log_id, "raft snapshot taken");
        Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: SnapshotData::Local(self.backend().clone()) })
    }
}

/// A snapshot file staged here, removed once installed (or not).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl StateMachine {
    /// Where snapshot files are staged: `tmp/` beside the backend.
    fn tmp_dir(&self) -> std::path::PathBuf {
        self.backend().path().parent().map(|p| p.join("tmp")).unwrap_or_else(std::env::temp_dir)
    }

    /// Replaces the state with the snapshot file at `path`, whose data must
    /// hold every entry `meta` names (it may hold more, from an older leader
    /// that sent the metadata of the snapshot's build with newer data).
    async fn install_file(&mut self, meta: &SnapshotMetaOf<TypeConfig>, path: &std::path::Path) -> io::Result<()> {
        let raft_meta = vec![
            (APPLIED_LOG_ID.to_vec(), encode(&meta.last_log_id)),
            (MEMBERSHIP.to_vec(), encode(&meta.last_membership)),
            (SNAPSHOT_META.to_vec(), encode(meta)),
        ];
        let applier = self.applier.clone();
        let (path, want) = (path.to_path_buf(), meta.last_log_id.map(|l| l.index()));
        tokio::task::spawn_blocking(move || applier.install_snapshot_file(&path, want, raft_meta))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut n = 0usize;
        while let Some((entry, responder)) = entries.try_next().await? {
            n += 1;
            let log_id = entry.log_id;
            let index = log_id.index();
            let term = log_id.committed_leader_id().term();
            let mut extra = vec![(APPLIED_LOG_ID.to_vec(), encode(&Some(log_id)))];
            let blank = matches!(entry.payload, EntryPayload::Blank);
            let req = match entry.payload {
                EntryPayload::Normal(cmd) => match InternalRaftRequest::decode(cmd.0) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        // Validation keeps this from happening; if it does, the entry
                        // becomes a no-op (its proposer times out) rather than a
                        // member that can never apply its log again.
                        tracing::error!(index, error = %e, "raft entry is not a request; applying it as a no-op");
                        None
                    }
                },
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(log_id), m);
                    extra.push((MEMBERSHIP.to_vec(), encode(&self.membership)));
                    None
                }
                EntryPayload::Blank => None,
            };
            let out = self.applier.apply(index, term, req.as_ref(), extra).map_err(io::Error::other)?;
            self.last_applied = Some(log_id);
            if blank {
                // A new leader's first entry: everything of the terms before is applied.
                self.applier.term_started(term);
            }
            if let (Some(out), Some(r)) = (out, &req) {
                let id = r.header.as_ref().map(|h| h.id).unwrap_or(r.id);
                (self.notify)(id, out);
            }
            if let Some(r) = responder {
                r.send(());
            }
        }
        metrics::get().apply_batch.observe(n as f64);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self {
            applier: self.applier.clone(),
            notify: self.notify.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let (path, _staged) = match snapshot {
            // Our own backend: it already holds at least what the snapshot says.
            SnapshotData::Local(be) if Arc::ptr_eq(&be, self.backend()) => {
                if meta.last_log_id > self.last_applied {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "snapshot at {:?} is ahead of the backend's applied {:?}",
                            meta.last_log_id, self.last_applied
                        ),
                    ));
                }
                return Ok(());
            }
            // Another state machine's backend (in one process: openraft's
            // storage tests): exported as a peer would receive it.
            SnapshotData::Local(be) => {
                let dir = self.tmp_dir();
                let name = format!("local-{}-{}.snap", std::process::id(), unique());
                let (path, _) =
                    tokio::task::spawn_blocking(move || export(&be, &dir, &name)).await.map_err(io::Error::other)??;
                (path.clone(), Some(TempFile(path)))
            }
            // The peer service removes the file it received.
            SnapshotData::Received(path) => (path, None),
        };
        self.install_file(meta, &path).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        Ok(self.stored_snapshot_meta()?.map(|meta| SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::Local(self.backend().clone()),
        }))
    }
}
