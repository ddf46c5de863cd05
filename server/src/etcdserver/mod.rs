//! The server logic between the gRPC layer and raft: quota, the KVServer
//! preflight checks, proposals with a timeout, linearizable reads, and the
//! maintenance operations. etcd's `etcdserver` package.

pub mod auth;
mod bootstrap;
mod cluster;
mod compactor;
mod concurrency;
mod discovery;
pub mod force;
mod forward_link;
mod forwarder;
pub mod kv;
mod lease;
pub mod maintenance;
mod peer;
mod read_index;

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use kvd_api::etcdserverpb::ResponseHeader;

pub use bootstrap::{ServerConfig, added_member_id, cluster_id, member_id};
pub use compactor::AutoCompaction;
pub use concurrency::prefix_end;

use crate::apply::{AlarmStore, Applier, ApplyError};
use crate::lease::Lessor;
use crate::mvcc::{KvStore, MvccError};
use crate::proposal::{IdGenerator, Wait};
use crate::quota::Quota;
use crate::raft::Raft;
use crate::wal::Wal;
use crate::watch::WatchHub;

/// Errors of the server layer (besides those of the layers below, which it carries).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    InvalidMemberUrls,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("mutex: session is expired")]
    SessionExpired,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// An error the leader answered a forwarded request with, passed on as is.
    #[error("{message}")]
    Remote { code: i32, message: String },
    #[error("etcdserver: {0}")]
    Internal(String),
}

/// Committed − applied beyond this rejects new proposals.
pub const MAX_GAP_BETWEEN_APPLY_AND_COMMIT: u64 = 5000;

pub struct EtcdServer {
    pub cfg: ServerConfig,
    pub member_id: u64,
    pub cluster_id: u64,
    raft: Raft,
    store: Arc<KvStore>,
    applier: Arc<Applier>,
    alarms: Arc<AlarmStore>,
    lessor: Arc<Lessor>,
    watch: Arc<WatchHub>,
    auth: Arc<crate::auth::AuthStore>,
    wait: Arc<Wait>,
    ids: IdGenerator,
    quota: Quota,
    wal: Wal,
    /// Whether this member is a learner, kept current from raft's metrics.
    learner: std::sync::atomic::AtomicBool,
    /// Linearizable reads waiting for a ReadIndex round.
    reads: read_index::ReadLoop,
    /// Channels to other members' peer services (forwarding, ReadIndex), by URL.
    peer_channels: parking_lot::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>,
    /// Writes on their way to the leader, batched.
    forwarder: forwarder::Forwarder,
    /// (leader, term) of the last AppendEntries this member accepted: Status
    /// names a leader it has heard from in the current term, as etcd's raft
    /// does, not the leader of a vote restored from disk (possibly dead).
    heard_leader: parking_lot::Mutex<(u64, u64)>,
}

impl EtcdServer {
    /// The proposal timeout: 5 s for the disk plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * Duration::from_millis(self.cfg.election_timeout_ms)
    }

    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn watch_hub(&self) -> &Arc<WatchHub> {
        &self.watch
    }

    /// A response header as etcd fills it: cluster, member, term, revision.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        let term = self.raft.metrics().borrow_watched().current_term;
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: if revision == 0 { self.store.rev() } else { revision },
            raft_term: term,
        }
    }

    /// Fills the cluster fields of a header the apply layer produced.
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map(|h| h.revision).unwrap_or(0);
        *h = Some(self.header(rev));
    }

    /// True when this member knows a leader. A leader that has not heard from
    /// a quorum within an election timeout counts as none (etcd's CheckQuorum:
    /// its leader steps down; openraft's keeps its role, so kvd asks).
    pub fn has_leader(&self) -> bool {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        match m.current_leader {
            None => false,
            Some(l) if l != self.member_id => true,
            Some(_) => {
                let voters = m.membership_config.membership().voter_ids().count();
                voters <= 1
                    || m.last_quorum_acked
                        .as_ref()
                        .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(self.cfg.election_timeout_ms))
            }
        }
    }

    /// Sets the gauges that are read at scrape time.
    pub fn refresh_gauges(&self) {
        let m = crate::metrics::get();
        let rm = self.raft.metrics().borrow_watched().clone();
        m.has_leader.set(self.has_leader() as i64);
        m.is_leader.set((rm.current_leader == Some(self.member_id)) as i64);
        m.is_learner.set(self.is_learner() as i64);
        let be = self.store.backend();
        m.db_total_size.set(be.size() as i64);
        m.db_in_use_size.set(be.size_in_use() as i64);
        m.keys_total.set(self.store.key_count() as i64);
        let (watchers, streams, slow) = self.watch_hub().counts();
        m.watchers.set(watchers as i64);
        m.watch_streams.set(streams as i64);
        m.slow_watchers.set(slow as i64);
        let committed = rm.local_committed.map(|l| l.index()).unwrap_or(0);
        let applied = self.applier.consistent_index();
        m.proposals_committed.set(committed as i64);
        m.proposals_applied.set(applied as i64);
        m.apply_lag.set(committed.saturating_sub(applied) as i64);
        m.refresh_process();
    }

    /// Starts the member's background work once it has started: leader
    /// tracking (lease clocks, metrics), lease expiry, auto-compaction, watch
    /// syncing and progress notifications, and publishing its attributes.
    pub fn run_background(self: &Arc<Self>) {
        self.watch_leader();
        self.run_lease_expiry();
        self.run_auto_compaction();
        self.watch_hub().start(self.cfg.watch_progress_notify_interval);
        self.publish_attributes();
    }

    /// Counts leader changes, as etcd's `leader_changes_seen_total`, and stops
    /// the process when raft has stopped on a fatal error.
    pub fn watch_leader(self: &Arc<Self>) {
        // Server metrics change with the leader, vote or membership only, not
        // with every entry committed and applied as the full metrics do.
        let mut rx = self.raft.server_metrics();
        let s = self.clone();
        let learner = s.learner_in(&rx.borrow_watched().membership_config);
        s.learner.store(learner, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                if rx.changed().await.is_err() {
                    // Raft's core has stopped. On a storage or apply failure
                    // memory may be ahead of the disk: stop the process; the
                    // WAL replays on restart.
                    if let Err(fatal) = &s.raft.metrics().borrow_watched().running_state
                        && !matches!(fatal, openraft::errors::Fatal::Stopped)
                    {
                        tracing::error!(error = %fatal, "raft stopped; exiting");
                        std::process::exit(1);
                    }
                    return;
                }
                let (leader, term, learner) = {
                    let m = rx.borrow_watched();
                    (m.current_leader, m.vote.leader_id().term, s.learner_in(&m.membership_config))
                };
                s.learner.store(learner, std::sync::atomic::Ordering::Relaxed);
                if leader != last {
                    s.on_leader_change(leader, term);
                    if leader.is_some() {
                        crate::metrics::get().leader_changes.inc();
                        tracing::info!(leader = %format!("{:x}", leader.unwrap_or(0)), "leader elected");
                    }
                    last = leader;
                }
            }
        });
    }

    /// The last log index this member, leading, knows `id`'s log to match
    /// (its replication progress); 0 if none is known or it does not lead.
    fn matched_index(&self, id: u64) -> u64 {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index()).unwrap_or(0)
    }

    /// Flushes the backend and stops raft and the WAL.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        if let Err(e) = self.store.backend().commit() {
            tracing::error!(error = %e, "final backend commit failed");
        }
        self.wal.close();
    }
}
