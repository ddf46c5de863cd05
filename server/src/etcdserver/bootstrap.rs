//! Starting a member: identity, data dir layout, WAL replay, backend, apply,
//! and raft (initialised on first start).
//!
//! Data dir layout: `<data-dir>/member/wal/*.wal` (the WAL) and
//! `<data-dir>/member/db.redb` (the backend). A missing backend file is rebuilt
//! by replaying the WAL from the start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{EtcdServer, ServerError};
use crate::apply::{AlarmStore, Applier};
use crate::auth::AuthStore;
use crate::backend::{Backend, Table};
use crate::lease::Lessor;
use crate::mvcc::KvStore;
use crate::proposal::{IdGenerator, Wait};
use crate::quota::Quota;
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerNetwork;
use crate::raft::state_machine::{Notify, StateMachine};
use crate::raft::{Member, Raft};
use crate::wal::{Metadata, Wal};
use crate::watch::WatchHub;

/// What the server needs from the command line.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// name -> peer urls, from `--initial-cluster`.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_token: String,
    /// `--initial-cluster-state existing`: join a running cluster instead of
    /// bootstrapping one.
    pub join_existing: bool,
    /// `--force-new-cluster`: restart as the only member, keeping the data.
    pub force_new_cluster: bool,
    /// `--force-new-cluster-member` naming this member: its token. Acts as
    /// `force_new_cluster` unless the data dir has acted on it already.
    pub force_new_cluster_token: Option<String>,
    pub quota_backend_bytes: i64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Streams one client connection may have open at once.
    pub max_concurrent_streams: u32,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub backend_batch_interval: Duration,
    pub backend_batch_limit: usize,
    /// Bytes of backend pages cached in memory.
    pub backend_cache_size: usize,
    /// The longest the WAL writer polls for work before it sleeps.
    pub wal_poll: Duration,
    /// Applied entries between raft snapshots (after which the log is purged,
    /// keeping 5000 entries).
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, for slow followers (etcd's 5000).
    pub snapshot_catchup_entries: u64,
    /// Period of progress notifications for watchers that ask for them.
    pub watch_progress_notify_interval: Duration,
    pub auto_compaction: super::AutoCompaction,
    /// How physical compactions step through the backend.
    pub compaction_pacing: crate::mvcc::CompactionPacing,
    /// How long an unused simple auth token stays valid.
    pub auth_token_ttl: Duration,
    /// bcrypt's cost for the passwords of UserAdd and UserChangePassword.
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a client certificate's common name is the user.
    pub client_cert_auth: bool,
    /// TLS for connections to other members' https peer URLs.
    pub peer_client_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// An initial member's id: from its peer URLs and the cluster token, as
/// etcd derives it, so every initial member computes the same ids.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    added_member_id(peer_urls, token, 0)
}

/// The id of a member added at `unix_nanos` (MemberAdd): the time makes it
/// new even for the peer URLs of a removed member, as in etcd, so a removed
/// member's old incarnation and data can never pass for its replacement.
pub fn added_member_id(peer_urls: &[String], token: &str, unix_nanos: u64) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    h.update(urls.join(",").as_bytes());
    h.update(token.as_bytes());
    if unix_nanos != 0 {
        h.update(unix_nanos.to_be_bytes());
    }
    nonzero(&h.finalize())
}

/// The backend's commit gate: a batch waits until the WAL holds, durably,
/// every entry it applied (its consistent index). raft applies an entry a
/// quorum of the others holds before this member's own fdatasync covers
/// it; a backend committed past its WAL would, after a power cut, hold
/// effects of entries the WAL lost, and the member could not start.
fn wal_first(durable: Arc<crate::raft::log_store::Durable>) -> crate::backend::CommitGate {
    Arc::new(move |batch: &crate::backend::Buffer| {
        let ci = batch.get(Table::Meta, crate::mvcc::meta::CONSISTENT_INDEX).flatten();
        let Some(ci) = ci.and_then(|b| crate::mvcc::meta::decode(&b)) else { return Ok(()) };
        let start = std::time::Instant::now();
        while !durable.wait(ci, Duration::from_secs(5)) {
            warn!(
                consistent_index = ci,
                wal_durable = durable.index(),
                waited_s = start.elapsed().as_secs(),
                "the backend commit waits for the WAL to make the applied entries durable"
            );
        }
        Ok(())
    })
}

/// The cluster id: from the sorted member ids and the token.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    h.update(token.as_bytes());
    nonzero(&h.finalize())
}

fn nonzero(digest: &[u8]) -> u64 {
    let v = u64::from_be_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
    if v == 0 { 1 } else { v }
}

impl EtcdServer {
    /// Opens the data dir and starts raft. Fails with a message naming the
    /// problem when the data dir is damaged or belongs to another cluster.
    pub async fn start(cfg: ServerConfig) -> Result<Arc<EtcdServer>, ServerError> {
        let err = |e: &dyn std::fmt::Display| ServerError::Internal(e.to_string());
        let member_dir = cfg.data_dir.join("member");
        std::fs::create_dir_all(&member_dir)
            .map_err(|e| err(&format!("cannot create {}: {e}", member_dir.display())))?;

        // The member's id comes from its own --initial-cluster entry, so every
        // member computes the same ids for everyone.
        let mut me =
            member_id(cfg.initial_cluster.get(&cfg.name).unwrap_or(&cfg.peer_urls), &cfg.initial_cluster_token);
        let mut ids: Vec<u64> =
            cfg.initial_cluster.values().map(|urls| member_id(urls, &cfg.initial_cluster_token)).collect();
        if ids.is_empty() {
            ids.push(me);
        }
        let existing = crate::wal::read_metadata(&member_dir.join("wal")).map_err(|e| err(&e))?;
        let cid = if let Some(m) = existing {
            // A data dir that has started before belongs to the member and
            // cluster its WAL names: as etcd, the bootstrap flags are ignored
            // then (a member restored without a token, or restarted with the
            // longer --initial-cluster of a scale-up, starts as itself).
            let flags_cid = cluster_id(&ids, &cfg.initial_cluster_token);
            if !cfg.join_existing && (m.node_id != me || m.cluster_id != flags_cid) {
                warn!(
                    member_id = %format!("{:x}", m.node_id),
                    cluster_id = %format!("{:x}", m.cluster_id),
                    "the data dir is initialized: --initial-cluster, --initial-cluster-token and \
                     --initial-cluster-state are ignored"
                );
            }
            me = m.node_id;
            m.cluster_id
        } else if cfg.join_existing {
            // A joining member belongs to the cluster it joins: asked of a
            // running member (MemberAdd chose the member's id).
            let (id, cid) = super::discovery::discover_cluster(&cfg).await?;
            me = id;
            cid
        } else {
            super::discovery::refuse_if_bootstrapped(&cfg).await?;
            cluster_id(&ids, &cfg.initial_cluster_token)
        };

        let (wal, replay) = Wal::open_with(
            &member_dir.join("wal"),
            Metadata { node_id: me, cluster_id: cid },
            crate::powercut::wal_hook(),
        )
        .map_err(|e| err(&e))?;
        wal.set_poll(cfg.wal_poll);
        let fresh = replay.entries.is_empty() && replay.state.is_none();
        let log = LogStore::new(wal.clone(), replay).map_err(|e| err(&format!("WAL entries: {e}")))?;
        let token = match &cfg.force_new_cluster_token {
            Some(t) if super::force::acted_on(&member_dir, t).map_err(|e| err(&e))? => {
                info!(token = %t, "--force-new-cluster-member: this data dir has acted on this token already; ignored");
                None
            }
            t => t.as_deref(),
        };
        if cfg.force_new_cluster || (token.is_some() && !fresh) {
            let node = Member {
                name: cfg.name.clone(),
                peer_urls: cfg.peer_urls.clone(),
                client_urls: cfg.client_urls.clone(),
            };
            if log.force_single_member(me, node).await.map_err(|e| err(&e))? {
                warn!(member_id = %format!("{me:x}"), token = token.unwrap_or_default(), "--force-new-cluster: this member is now the only member of its cluster; add the others back as new members");
            }
        } else if token.is_some() {
            // A member started on an empty data dir has nothing to force (its
            // data came after the token was issued): record the token all the
            // same, so that the data it gets from now on is never reset by it.
            warn!("--force-new-cluster-member names this member, but its data dir is empty: nothing to force");
        }
        if let Some(t) = token {
            super::force::record(&member_dir, t)
                .map_err(|e| err(&format!("cannot record the --force-new-cluster-member token: {e}")))?;
        }

        let backend = Backend::open(&member_dir.join("db.redb"), cfg.backend_batch_limit, cfg.backend_cache_size)
            .map_err(|e| err(&e))?;
        backend.set_commit_gate(wal_first(log.durable()));
        backend.run_committer(cfg.backend_batch_interval, |e| {
            // A failed backend commit leaves memory ahead of the disk: stop, and let
            // the WAL replay on the next start.
            tracing::error!(error = %e, "backend commit failed; stopping");
            std::process::exit(1);
        });
        let store = KvStore::open(backend.clone()).map_err(|e| err(&e))?;
        store.set_compaction_pacing(cfg.compaction_pacing);
        let alarms = Arc::new(AlarmStore::load(&backend).map_err(|e| err(&e))?);
        let lessor = Arc::new(Lessor::new(Lessor::min_ttl_for(Duration::from_millis(cfg.election_timeout_ms))));
        let watch = WatchHub::new(store.clone());
        let auth = Arc::new(AuthStore::new(cfg.auth_token_ttl));
        let applier = Arc::new(
            Applier::new(store.clone(), alarms.clone(), lessor.clone(), watch.clone(), auth.clone())
                .map_err(|e| err(&e))?,
        );
        let wait = Arc::new(Wait::default());
        let w = wait.clone();
        let notify: Notify = Arc::new(move |id, r| w.trigger(id, r));
        let sm = StateMachine::new(applier.clone(), notify).map_err(|e| err(&e))?;
        // What raft will resume applying after. It equals the consistent index,
        // except after installing a leader's snapshot whose data was newer than
        // its metadata (the consistent index is then ahead, and apply skips the
        // entries it already holds).
        let (applied, mut last) = (sm.applied_index(), log.last_index());
        if applied > last
            && let Some(at) = sm.snapshot_at_applied().map_err(|e| err(&e))?
        {
            // The backend is exactly a snapshot installed from the leader, and
            // the WAL's record of it (written after the install) did not
            // become durable before the member stopped. The snapshot covers
            // every entry up to it: record it now, as the install would have.
            warn!(
                snapshot_index = at.index(),
                wal_last = last,
                "the WAL lacks the record of the snapshot the backend holds; recording it"
            );
            log.record_snapshot(at).await.map_err(|e| err(&e))?;
            last = log.last_index();
        }
        if applied > last {
            // The backend holds effects of entries the WAL no longer has: acknowledged
            // records were lost from the WAL (a truncated or replaced log).
            return Err(err(&format!(
                "the backend in {} has applied raft index {applied} but the WAL in {} ends at index {last}: \
                 WAL records were lost; restore the WAL or remove the member's data dir and rejoin",
                member_dir.join("db.redb").display(),
                member_dir.join("wal").display()
            )));
        }
        if let Some(purged) = log.last_purged_index()
            && applied < purged
        {
            return Err(err(&format!(
                "the backend in {} has applied raft index {applied} but the WAL in {} starts after index {purged}: \
                 the entries in between are gone (was the backend file deleted or replaced?); \
                 restore the member from a snapshot",
                member_dir.join("db.redb").display(),
                member_dir.join("wal").display()
            )));
        }

        let rcfg = Config {
            cluster_name: cfg.initial_cluster_token.clone(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count.max(1)),
            max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
            purge_batch_size: 1,
            max_payload_entries: 1000,
            // A restarted leader must win an election like any member (as in
            // etcd's raft). openraft's default lets it resume leading at once,
            // but its commit index is not synced to disk (the WAL's commit
            // record is lazy) and the backend commits in batches, so it would
            // serve linearizable reads from a stale commit index: the fault
            // harness caught reads missing acknowledged writes right after a
            // leader's kill -9 and restart.
            enable_leader_restore: Some(false),
            // etcd's --pre-vote (on by default since 3.5): a member back from
            // a pause or a partition does not depose a working leader.
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| err(&format!("raft config: {e}")))?;
        let network = PeerNetwork { cluster_id: cid, tls: cfg.peer_client_tls.clone() };
        let raft = Raft::new(me, Arc::new(rcfg), network, log, sm).await.map_err(|e| err(&e))?;
        if fresh && !cfg.join_existing {
            // Every initial member initializes with the same membership; raft
            // then elects a leader among them. A restored data dir has its
            // membership from the restore (the flags' would not hold its id).
            let restored: Option<BTreeMap<u64, Member>> = backend
                .get(Table::Meta, crate::raft::BOOTSTRAP_MEMBERS)
                .map_err(|e| err(&e))?
                .map(|b| crate::raft::decode(&b))
                .transpose()
                .map_err(|e| err(&format!("the restored membership in {}: {e}", member_dir.display())))?;
            let mut members: BTreeMap<u64, Member> = restored.unwrap_or_else(|| {
                cfg.initial_cluster
                    .iter()
                    .map(|(name, urls)| {
                        let id = member_id(urls, &cfg.initial_cluster_token);
                        (id, Member { name: name.clone(), peer_urls: urls.clone(), client_urls: Vec::new() })
                    })
                    .collect()
            });
            if let Some(m) = members.get_mut(&me) {
                m.client_urls = cfg.client_urls.clone();
            }
            let n = members.len();
            match raft.initialize(members).await {
                Ok(()) => {
                    info!(member_id = %format!("{me:x}"), cluster_id = %format!("{cid:x}"), members = n, "bootstrapped new cluster")
                }
                Err(openraft::errors::RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(err(&e)),
            }
        }
        crate::metrics::get().server_id.set(me as i64);
        let quota = Quota::new(cfg.quota_backend_bytes);
        crate::metrics::get().quota_backend_bytes.set(quota.limit() as i64);
        let server = Arc::new(EtcdServer {
            ids: IdGenerator::new(me),
            cfg,
            member_id: me,
            cluster_id: cid,
            raft,
            store,
            applier,
            alarms,
            lessor,
            watch,
            auth,
            wait,
            quota,
            wal,
            peer_channels: Default::default(),
            forwarder: Default::default(),
            heard_leader: Default::default(),
            learner: Default::default(),
            reads: Default::default(),
        });
        server.run_read_loop();
        Ok(server)
    }
}
