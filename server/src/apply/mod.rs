//! Apply: committed raft entries, in order, into MVCC.
//!
//! Each entry runs in one MVCC write transaction whose `end` buffers the effects
//! together with the consistent index (the entry's raft index). Entries at or
//! below the consistent index were applied before a restart and are skipped, so
//! replaying the WAL is idempotent.

pub mod alarm;
pub mod auth;
pub mod range;
pub mod txn;
pub mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvd_api::etcdserverpb::{
    AlarmResponse, AlarmType, CompactionResponse, DeleteRangeResponse, InternalRaftRequest, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use kvd_api::membershippb::Attributes;
use prost::Message;
use tokio::sync::oneshot;
use tracing::{info_span, warn};

use crate::auth::{AuthStore, is_auth_change};
use crate::backend::Table;
use crate::lease::{LeaseError, Lessor, lease_key, lease_value};
use crate::metrics;
use crate::mvcc::{KvStore, MvccError, meta};
use crate::watch::WatchHub;
pub use alarm::AlarmStore;

/// Errors raised while applying an entry; they are the entry's result, not failures of apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: not capable")]
    NotCapable,
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// Apply could not finish an entry it had started changing: memory and the
/// backend may disagree, so the member must stop (etcd panics here) and
/// replay the entry from the WAL on the next start.
#[derive(Debug, thiserror::Error)]
#[error("apply of raft entry {index} failed after it changed state: {cause}")]
pub struct ApplyFatal {
    pub index: u64,
    pub cause: ApplyError,
}

/// The result of applying one request.
#[derive(Debug)]
pub enum ApplyOutput {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// The receiver fires when the physical compaction is done.
    Compaction(CompactionResponse, oneshot::Receiver<()>),
    Alarm(AlarmResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// An auth change; Authenticate carries the token it issued.
    Auth(Option<String>),
    /// Entries without a client result (blank, membership).
    None,
}

/// An apply slower than this is logged, as etcd does.
const SLOW_APPLY: Duration = Duration::from_millis(100);

pub struct Applier {
    store: Arc<KvStore>,
    /// Members' published attributes (name, client URLs), by member id.
    members: parking_lot::RwLock<std::collections::BTreeMap<u64, Attributes>>,
    /// Physical compactions run one at a time, in order, on one thread.
    compactor: std::sync::mpsc::Sender<(i64, oneshot::Sender<()>)>,
    alarms: Arc<AlarmStore>,
    lessor: Arc<Lessor>,
    watch: Arc<WatchHub>,
    auth: Arc<AuthStore>,
    /// Index of the last applied entry, plus one (0 = nothing applied yet:
    /// openraft's log starts at index 0).
    applied_next: AtomicU64,
}

impl Applier {
    pub fn new(
        store: Arc<KvStore>,
        alarms: Arc<AlarmStore>,
        lessor: Arc<Lessor>,
        watch: Arc<WatchHub>,
        auth: Arc<AuthStore>,
    ) -> Result<Self, MvccError> {
        let ci = store.backend().get(Table::Meta, meta::CONSISTENT_INDEX)?.and_then(|b| meta::decode(&b));
        let compactor = start_compactor(store.clone()).map_err(|e| {
            MvccError::Backend(crate::backend::BackendError::Storage(format!("cannot start the compactor: {e}")))
        })?;
        let members = parking_lot::RwLock::new(load_members(store.backend())?);
        lessor.load(store.backend(), &store)?;
        auth.load(store.backend())?;
        Ok(Self {
            store,
            members,
            compactor,
            alarms,
            lessor,
            watch,
            auth,
            applied_next: AtomicU64::new(ci.map(|i| i + 1).unwrap_or(0)),
        })
    }

    /// The index of the last applied entry (0 before anything was applied).
    pub fn consistent_index(&self) -> u64 {
        self.applied_next.load(Ordering::SeqCst).saturating_sub(1)
    }

    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// Apply reached the first entry of `term` (its leader's blank entry):
    /// a leader of that term may start its lease clocks now.
    pub fn term_started(&self, term: u64) {
        self.lessor.term_started(term);
    }

    /// A member's published attributes (name, client URLs), if it published them.
    pub fn member_attributes(&self, id: u64) -> Option<Attributes> {
        self.members.read().get(&id).cloned()
    }

    /// Replaces the whole state with a snapshot file received from the leader:
    /// the backend's content (plus `raft_meta` on top), then the index, the
    /// alarms and the consistent index, all re-read from it. The file must
    /// hold every entry up to `covers` (the raft index its metadata names):
    /// data that stops short of it would lose the entries between, so it is
    /// not installed (nothing of it reaches the backend), and the error
    /// stops raft, since openraft has taken the snapshot as installed by
    /// then. No kvd sends such a snapshot: this is a check, not a path.
    pub fn install_snapshot_file(
        &self,
        path: &std::path::Path,
        covers: Option<u64>,
        raft_meta: Vec<(Vec<u8>, Bytes)>,
    ) -> Result<(), MvccError> {
        let be = self.store.backend();
        self.store.install_snapshot(
            |insert| {
                let mut data_ci = None;
                crate::snapshot::read(path, |t, k, v| {
                    if t == Table::Meta && k == meta::CONSISTENT_INDEX {
                        data_ci = meta::decode(v);
                    }
                    insert(t, k, v)
                })
                .map_err(|e| e.to_string())?;
                match (covers, data_ci) {
                    (Some(want), got) if got.unwrap_or(0) < want => Err(format!(
                        "snapshot {} holds entries up to {} but its metadata says {want}",
                        path.display(),
                        got.unwrap_or(0)
                    )),
                    _ => Ok(()),
                }
            },
            raft_meta,
        )?;
        self.alarms.reload(be)?;
        self.lessor.load(be, &self.store)?;
        self.auth.load(be)?;
        *self.members.write() = load_members(be)?;
        let ci = be.get(Table::Meta, meta::CONSISTENT_INDEX)?.and_then(|b| meta::decode(&b));
        self.applied_next.store(ci.map(|i| i + 1).unwrap_or(0), Ordering::SeqCst);
        self.watch.reset();
        if ci > covers {
            // An older leader sent the metadata of the snapshot's build with
            // newer data: raft applies the entries between as no-ops.
            warn!(consistent_index = ci, metadata = covers, "installed snapshot holds more than its metadata says");
        }
        tracing::info!(consistent_index = ci, revision = self.store.rev(), "installed snapshot from the leader");
        Ok(())
    }

    /// Applies the entry at (`index`, `term`). `extra` are meta writes (raft's
    /// applied log id, membership) that must persist atomically with it.
    /// Returns None when the entry was applied before (index <= consistent index).
    pub fn apply(
        &self,
        index: u64,
        term: u64,
        req: Option<&InternalRaftRequest>,
        extra: Vec<(Vec<u8>, Bytes)>,
    ) -> Result<Option<Result<ApplyOutput, ApplyError>>, ApplyFatal> {
        if index < self.applied_next.load(Ordering::SeqCst) {
            // The data holds this entry already (it came in a snapshot whose
            // metadata was older than its data). Raft's rows still follow the
            // entry: a membership change among them must survive a restart.
            if !extra.is_empty() {
                self.store.backend().write(|b| extra.into_iter().for_each(|(k, v)| b.put(Table::Meta, k, v)));
            }
            return Ok(None);
        }
        let _span = info_span!("apply", index, term).entered();
        let start = Instant::now();
        let mut w = self.store.write();
        let collect = self.watch.has_watchers();
        if collect {
            w.collect_events();
        }
        for (k, v) in extra {
            w.put_extra(Table::Meta, k, Some(v));
        }
        let mut compaction = None;
        let out = match req {
            None => Ok(ApplyOutput::None),
            Some(r) => self.apply_request(&mut w, index, r, &mut compaction),
        };
        if let Err(e) = &out
            && w.has_changes()
        {
            // Checks passed but execution failed midway (a backend read error):
            // the entry is half-applied in memory. Do not publish it.
            return Err(ApplyFatal { index, cause: e.clone() });
        }
        if let Ok(ApplyOutput::Alarm(_)) = &out {
            for (k, v) in self.alarms.pending_writes() {
                w.put_extra(Table::Alarm, k, v);
            }
        }
        let (rev, events) = w.end(index, term);
        self.applied_next.store(index + 1, Ordering::SeqCst);
        self.watch.notify(rev, collect.then_some(events));
        let out = match (out, compaction) {
            (Ok(ApplyOutput::Compaction(resp, _)), Some(rev)) => {
                Ok(ApplyOutput::Compaction(resp, self.spawn_physical_compaction(rev)))
            }
            (o, _) => o,
        };
        let took = start.elapsed();
        if took > SLOW_APPLY {
            metrics::get().slow_apply.inc();
            warn!(index, took_ms = took.as_millis() as u64, expected_ms = 100u64, "apply request took too long");
        }
        Ok(Some(out))
    }

    fn apply_request(
        &self,
        w: &mut crate::mvcc::WriteTxn<'_>,
        index: u64,
        r: &InternalRaftRequest,
        compaction: &mut Option<i64>,
    ) -> Result<ApplyOutput, ApplyError> {
        auth::check(&self.auth, &self.lessor, r)?;
        if is_auth_change(r) {
            let (writes, token) = self.auth.apply(r, index)?;
            for (t, k, v) in writes {
                w.put_extra(t, k, v);
            }
            return Ok(ApplyOutput::Auth(token));
        }
        let nospace = self.alarms.active(AlarmType::Nospace);
        if let Some(p) = &r.put {
            if nospace {
                return Err(ApplyError::NoSpace);
            }
            return txn::put(w, &self.lessor, p).map(ApplyOutput::Put);
        }
        if let Some(d) = &r.delete_range {
            return txn::delete_range(w, &self.lessor, d).map(ApplyOutput::DeleteRange);
        }
        if let Some(t) = &r.txn {
            if nospace && crate::quota::txn_cost(t) > 0 {
                return Err(ApplyError::NoSpace);
            }
            return txn::txn(w, &self.lessor, t).map(ApplyOutput::Txn);
        }
        if let Some(c) = &r.compaction {
            w.schedule_compaction(c.revision)?;
            *compaction = Some(c.revision);
            let header = Some(ResponseHeader { revision: w.store().rev(), ..Default::default() });
            let (_tx, rx) = oneshot::channel();
            return Ok(ApplyOutput::Compaction(CompactionResponse { header }, rx));
        }
        if let Some(a) = &r.alarm {
            return Ok(ApplyOutput::Alarm(self.alarms.apply(a)));
        }
        if let Some(m) = &r.cluster_member_attr_set {
            let attrs = m.member_attributes.clone().unwrap_or_default();
            w.put_extra(Table::Meta, member_key(m.member_id), Some(Bytes::from(attrs.encode_to_vec())));
            self.members.write().insert(m.member_id, attrs);
            return Ok(ApplyOutput::None);
        }
        if let Some(g) = &r.lease_grant {
            if nospace {
                return Err(ApplyError::NoSpace);
            }
            let ttl = self.lessor.grant(g.id, g.ttl).map_err(|e| match e {
                LeaseError::Exists => ApplyError::LeaseExists,
                LeaseError::TtlTooLarge => ApplyError::LeaseTtlTooLarge,
                LeaseError::NotFound | LeaseError::NotPrimary => ApplyError::LeaseNotFound,
            })?;
            w.put_extra(Table::Lease, lease_key(g.id), Some(lease_value(ttl)));
            let header = Some(ResponseHeader { revision: w.rev(), ..Default::default() });
            return Ok(ApplyOutput::LeaseGrant(LeaseGrantResponse { header, id: g.id, ttl, error: String::new() }));
        }
        if let Some(rv) = &r.lease_revoke {
            let resp = txn::lease_revoke(w, &self.lessor, rv.id)?;
            w.put_extra(Table::Lease, lease_key(rv.id), None);
            return Ok(ApplyOutput::LeaseRevoke(resp));
        }
        Err(ApplyError::NotCapable)
    }

    fn spawn_physical_compaction(&self, rev: i64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Err(std::sync::mpsc::SendError((_, tx))) = self.compactor.send((rev, tx)) {
            let _ = tx.send(());
        }
        rx
    }
}

/// Meta key of a member's attributes.
fn member_key(id: u64) -> Vec<u8> {
    format!("member/{id:016x}").into_bytes()
}

fn load_members(be: &crate::backend::Backend) -> Result<std::collections::BTreeMap<u64, Attributes>, MvccError> {
    let mut out = std::collections::BTreeMap::new();
    be.scan_committed(Table::Meta, b"member/", Some(b"member0"), |k, v| {
        let id = std::str::from_utf8(&k[7..]).ok().and_then(|h| u64::from_str_radix(h, 16).ok());
        if let (Some(id), Ok(a)) = (id, Attributes::decode(v)) {
            out.insert(id, a);
        }
        true
    })?;
    Ok(out)
}

/// The compactor thread: physical compactions in the order they were applied.
fn start_compactor(store: Arc<KvStore>) -> std::io::Result<std::sync::mpsc::Sender<(i64, oneshot::Sender<()>)>> {
    let (tx, rx) = std::sync::mpsc::channel::<(i64, oneshot::Sender<()>)>();
    std::thread::Builder::new().name("kvd-compactor".into()).spawn(move || {
        for (rev, done) in rx {
            if let Err(e) = store.compact_physical(rev) {
                tracing::error!(revision = rev, error = %e, "physical compaction failed");
            }
            let _ = done.send(());
        }
    })?;
    Ok(tx)
}
