//! The planner: a pure function from an `Observation` to the ONE next safe
//! step. No I/O; every rule is exercised by table tests and property tests in
//! `planner_tests.rs`. Rules, in priority order:
//! invalid spec → bootstrap → missing objects → maintenance CronJobs to
//! create, update or delete → unreachable/quorum loss → NOSPACE remediation →
//! failed members → learner in flight → template drift → StatefulSet shrink →
//! scale up (learner add) → [every member healthy] rolling restart → scale
//! down → idle. A quorum-loss recovery under way (`recovery.rs`) comes right
//! after the CronJobs, and quorum loss itself goes to `recovery.rs` too.
//! Scheduled compaction and defragmentation are not steps: the CronJobs run
//! them (`maintenance.rs`).

use crate::observe::{AlarmKind, MemberObs, Observation, Owned};
use crate::recovery::RecoveryEnd;
use crate::resources::Task;
use crate::upgrade::Gate;

/// Smallest free fraction worth a defragmentation while remediating NOSPACE.
pub const NOSPACE_MIN_FREE_FRACTION: f64 = 0.05;
/// A learner is promoted once its raft index reaches this share of the leader's.
pub const PROMOTE_AT: f64 = 0.9;

/// Why a member is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    ScaleDown,
    Failed,
}

/// Why compaction or defragmentation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Nospace,
    Rolling,
    ScaleDown,
}

/// One step.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create all objects; the StatefulSet starts with `replicas` pods forming the cluster.
    Bootstrap { replicas: u32 },
    /// Rewrite the ConfigMap with `initial-cluster-state: existing` once the
    /// cluster has formed, so a member that loses its volume later cannot
    /// bootstrap a second cluster (it must join, and is refused).
    MarkExisting,
    /// Re-create missing Services, ConfigMap or PDB.
    EnsureObjects { missing: Vec<Owned> },
    /// Create or update the CronJob of a scheduled maintenance task.
    EnsureCronJob { task: Task },
    /// Delete the CronJob of a task no longer scheduled (its Jobs go with it).
    DeleteCronJob { task: Task },
    /// Apply the StatefulSet's new pod template (pods restart one by one later).
    UpdateStatefulSet,
    /// Set the StatefulSet's replicas (one more or one less).
    ResizeStatefulSet { replicas: u32 },
    /// MemberAdd as learner for `ordinal`, and record it in the ConfigMap.
    AddLearner { ordinal: u32 },
    /// MemberPromote.
    PromoteLearner { id: u64, ordinal: u32 },
    /// MemberRemove.
    RemoveMember { id: u64, ordinal: Option<u32>, reason: RemoveReason },
    /// MoveLeader, before removing, restarting or defragmenting the leader.
    MoveLeader { from: u64, to: u64, why: Why },
    /// Delete a learner's claim and pod so it restarts from a fresh volume.
    RecycleMember { ordinal: u32 },
    /// Delete a pod running an old template (StatefulSet uses OnDelete).
    RestartPod { ordinal: u32 },
    /// Quorum-loss recovery: set the ConfigMap's `force-new-cluster-member`
    /// to this member and `token` (and `since`), then delete its pod.
    ForceNewCluster { ordinal: u32, token: String, since: jiff::Timestamp },
    /// Quorum-loss recovery over: clear the ConfigMap's recovery keys.
    EndRecovery { ordinal: u32, outcome: RecoveryEnd },
    /// Compact the keyspace at `revision`.
    Compact { revision: i64, why: Why },
    /// Defragment one member.
    Defragment { id: u64, ordinal: Option<u32>, why: Why },
    /// AlarmRequest DEACTIVATE NOSPACE.
    DisarmNospace,
    /// Create the Job that checks the backup the cluster is to start from.
    CheckBackup,
    /// Create the Job of an on-demand backup (annotation `kvd.io/backup-now`).
    BackupNow { token: String },
    /// Take the backup before an upgrade to a new image (`upgrade.rs`).
    UpgradeBackup { token: String },
    /// Turn etcd authentication on (creating the root user and the users of
    /// the operator's and the Jobs' certificates first) or off.
    SetAuth { enable: bool },
    /// Ask member `ordinal`'s claim for `spec.storage.size` (`volumes.rs`).
    ExpandClaim { ordinal: u32 },
    /// Nothing safe to do yet; look again soon.
    Wait { reason: &'static str, message: String },
    /// Something needs a human or cannot be done safely.
    Degraded { reason: &'static str, message: String },
    /// All is as desired.
    Idle,
}

/// Majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// A member that answered Status and knows a leader.
pub(crate) fn healthy(m: &MemberObs) -> bool {
    m.health.as_ref().is_some_and(|h| h.leader != 0)
}

/// Members split by role, with the leader.
struct View<'a> {
    voters: Vec<&'a MemberObs>,
    learners: Vec<&'a MemberObs>,
    leader: Option<&'a MemberObs>,
}

impl<'a> View<'a> {
    fn new(members: &'a [MemberObs]) -> Self {
        let voters: Vec<_> = members.iter().filter(|m| !m.is_learner).collect();
        let learners = members.iter().filter(|m| m.is_learner).collect();
        // The leader is the one most healthy voters name.
        let mut votes: Vec<(u64, usize)> = Vec::new();
        for h in voters.iter().filter_map(|m| m.health.as_ref()).filter(|h| h.leader != 0) {
            match votes.iter_mut().find(|(id, _)| *id == h.leader) {
                Some(v) => v.1 += 1,
                None => votes.push((h.leader, 1)),
            }
        }
        let leader_id = votes.iter().max_by_key(|(_, n)| *n).map(|(id, _)| *id);
        let leader = leader_id.and_then(|id| voters.iter().copied().find(|m| m.id == id));
        View { voters, learners, leader }
    }

    fn healthy_voters(&self) -> usize {
        self.voters.iter().filter(|m| healthy(m)).count()
    }

    fn all_healthy(&self) -> bool {
        self.healthy_voters() == self.voters.len()
    }

    /// Can `victim` leave the voters without the rest dropping below quorum?
    fn removal_safe(&self, victim: u64) -> bool {
        let rest = self.voters.iter().filter(|m| m.id != victim);
        let healthy_rest = rest.clone().filter(|m| healthy(m)).count();
        healthy_rest >= quorum(rest.count())
    }

    /// Best healthy voter other than `from` to take leadership.
    fn transferee(&self, from: u64, avoid: impl Fn(&MemberObs) -> bool) -> Option<&'a MemberObs> {
        self.voters
            .iter()
            .copied()
            .filter(|m| m.id != from && healthy(m) && !avoid(m))
            .max_by_key(|m| (m.health.as_ref().map(|h| h.raft_index), std::cmp::Reverse(m.ordinal)))
    }

    fn leader_id(&self) -> u64 {
        self.leader.map(|l| l.id).unwrap_or(0)
    }
}

/// A leader and a quorum of healthy voters.
pub fn has_quorum(members: &[MemberObs]) -> bool {
    let v = View::new(members);
    v.leader.is_some() && v.healthy_voters() >= quorum(v.voters.len())
}

/// Before a cluster that starts from a backup is created: the backup is
/// checked by a Job first; a bad one creates nothing (Degraded
/// BackupInvalid), a good one is recorded in the status (so every member
/// restores the very object checked) before the Bootstrap.
fn restore_gate(obs: &Observation) -> Option<Action> {
    if !obs.desired.from_backup || obs.bootstrapped || obs.restored_from.is_some() {
        return None;
    }
    Some(match crate::maintenance::records(&obs.jobs).restore_check {
        Some(Err(why)) => degraded(
            "BackupInvalid",
            format!(
                "the backup to start from cannot be used, so nothing was created: {why}; fix \
                 spec.bootstrap.fromBackup (a changed one is checked again)"
            ),
        ),
        Some(Ok(b)) => wait("CheckingBackup", format!("backup {} (revision {}) checked", b.key, b.revision)),
        None if obs.jobs.iter().any(|j| j.task == Task::RestoreCheck) => {
            wait("CheckingBackup", "a Job is checking the backup to start from".into())
        }
        None => Action::CheckBackup,
    })
}

/// The next step for this observation.
pub fn plan(obs: &Observation) -> Action {
    let d = &obs.desired;
    if d.replicas == 0 {
        return degraded("InvalidSpec", "replicas must be at least 1".into());
    }
    if d.replicas.is_multiple_of(2) && !d.allow_even {
        return degraded("EvenReplicas", format!("replicas {} is even; set allowEvenReplicas", d.replicas));
    }
    if let Some(conflict) = &d.tls_conflict {
        return degraded("TLSChangeUnsupported", conflict.clone());
    }
    // Mode CertManager: the first members wait for their certificates.
    if obs.statefulset.is_none()
        && let Some(pending) = &obs.certs_pending
    {
        return wait("CertificatesPending", pending.clone());
    }
    if let Some(problem) = &d.tls_problem {
        return degraded("TLSSecretInvalid", problem.clone());
    }
    if d.auth == Some(true) && !d.client_tls {
        return degraded(
            "AuthNeedsClientTLS",
            "spec.auth needs client TLS: the operator and the Jobs authenticate by certificate".into(),
        );
    }
    let Some(sts) = &obs.statefulset else {
        if let Some(a) = restore_gate(obs) {
            return a;
        }
        return Action::Bootstrap { replicas: d.replicas };
    };
    if !obs.missing.is_empty() {
        return Action::EnsureObjects { missing: obs.missing.clone() };
    }
    if let Some(a) = crate::maintenance::cronjob_step(obs) {
        return a;
    }
    if let Some(token) = &obs.backup_token
        && d.backup_configured
        && obs.bootstrapped
        && obs.backup_request.as_ref() != Some(token)
    {
        return Action::BackupNow { token: token.clone() };
    }
    if let Some(r) = &obs.recovery {
        return crate::recovery::step(obs, r);
    }
    let Some(members) = obs.members.as_deref() else {
        if obs.bootstrapped {
            return quorum_lost(obs, "no member answers MemberList");
        }
        return wait("Bootstrapping", "waiting for the first members to answer".into());
    };
    let v = View::new(members);
    if !obs.bootstrapped && v.leader.is_none() {
        return wait("Bootstrapping", "waiting for the first leader".into());
    }
    if !has_quorum(members) {
        let msg =
            format!("{} of {} voters healthy, leader {:?}", v.healthy_voters(), v.voters.len(), v.leader.map(|l| l.id));
        return quorum_lost(obs, &msg);
    }
    if obs.bootstrapped && obs.initial_state_new {
        return Action::MarkExisting;
    }
    if obs.alarms.iter().any(|a| a.kind == AlarmKind::Corrupt) {
        return degraded("CorruptAlarm", "a member raised CORRUPT; needs an operator".into());
    }
    if obs.alarms.iter().any(|a| a.kind == AlarmKind::Nospace) && d.auto_remediate {
        return nospace(obs, &v, members);
    }
    if let Some(a) = failed_member(obs, &v) {
        return a;
    }
    if let Some(l) = v.learners.first() {
        return learner_step(&v, l, sts.replicas);
    }
    let member_ordinals: Vec<u32> = members.iter().filter_map(|m| m.ordinal).collect();
    // Every member healthy, and each one's pod ready: the gate of upgrades,
    // rolling restarts and scale-down below.
    let all_ready = v.all_healthy() && obs.pods.iter().all(|(o, p)| !member_ordinals.contains(o) || p.ready);
    let running: Vec<&str> = obs.pods.values().filter_map(|p| p.image.as_deref()).collect();
    let backup = d.upgrade_backup.as_ref().map(|(t, j)| (t.as_str(), j.as_str()));
    match crate::upgrade::gate(&d.image, &running, backup, &obs.jobs, all_ready) {
        Gate::Open => {}
        Gate::Refused(reason, message) => return degraded(reason, message),
        Gate::Backup(token) => return Action::UpgradeBackup { token },
        Gate::Wait(reason, message) => return wait(reason, message),
    }
    if sts.template_hash.as_deref() != Some(d.template_hash.as_str()) {
        return Action::UpdateStatefulSet;
    }
    let voters = v.voters.len() as u32;
    // A removed member's pod is still there: shrink the StatefulSet.
    if sts.replicas > 0 && !member_ordinals.contains(&(sts.replicas - 1)) && voters >= d.replicas {
        return Action::ResizeStatefulSet { replicas: sts.replicas - 1 };
    }
    // Adding a learner never changes the quorum, so a replacement may start
    // while another voter is down (quorum itself was checked above).
    if voters < d.replicas {
        let ordinal = (0..).find(|i| !member_ordinals.contains(i)).unwrap_or(voters);
        if ordinal >= sts.replicas && obs.pvcs.contains(&ordinal) {
            return degraded(
                "StaleVolume",
                format!("claim {ordinal} holds data of a removed member (whenScaled: Retain); delete it to scale up"),
            );
        }
        return Action::AddLearner { ordinal };
    }
    if !all_ready {
        return wait("MembersNotReady", "waiting for every member to be healthy".into());
    }
    if let (Some(want), Some(on)) = (d.auth, obs.auth_enabled)
        && want != on
    {
        return Action::SetAuth { enable: want };
    }
    if let Some(a) = rolling(obs, &v) {
        return a;
    }
    if voters > d.replicas {
        let Some(victim) = v.voters.iter().copied().max_by_key(|m| m.ordinal) else {
            return Action::Idle;
        };
        return remove_voter(&v, victim, RemoveReason::ScaleDown);
    }
    if let Some(a) = crate::volumes::step(obs, &member_ordinals) {
        return a;
    }
    Action::Idle
}

fn wait(reason: &'static str, message: String) -> Action {
    Action::Wait { reason, message }
}

fn degraded(reason: &'static str, message: String) -> Action {
    Action::Degraded { reason, message }
}

fn quorum_lost(obs: &Observation, detail: &str) -> Action {
    crate::recovery::on_quorum_loss(obs, detail)
}

/// MoveLeader first if `victim` leads; remove only when quorum survives.
fn remove_voter(v: &View, victim: &MemberObs, reason: RemoveReason) -> Action {
    if v.leader_id() == victim.id {
        return match v.transferee(victim.id, |_| false) {
            Some(to) => Action::MoveLeader { from: victim.id, to: to.id, why: Why::ScaleDown },
            None => degraded("NoTransferee", "no healthy voter can take leadership".into()),
        };
    }
    if !v.removal_safe(victim.id) {
        return degraded(
            "RemovalUnsafe",
            format!("removing member {:x} would leave fewer than a quorum healthy", victim.id),
        );
    }
    Action::RemoveMember { id: victim.id, ordinal: victim.ordinal, reason }
}

/// Its pod has been failing for `failedMemberTimeoutSeconds` (a pod being
/// deleted is already on its way out: not failing, just stale).
fn pod_failed(obs: &Observation, m: &MemberObs) -> bool {
    let failing = m
        .ordinal
        .and_then(|o| obs.pods.get(&o))
        .filter(|p| !p.terminating)
        .and_then(|p| p.failing_for)
        .is_some_and(|f| f >= obs.desired.failed_member_after);
    failing && !healthy(m)
}

/// A learner whose pod keeps failing: one that never started gets a fresh
/// volume; one that started (it has a name) is removed, since with a fresh
/// volume it could never rejoin under its id, and added back later like a
/// failed voter. A failed voter is removed (one replacement at a time,
/// never below quorum) and added back later.
fn failed_member(obs: &Observation, v: &View) -> Option<Action> {
    if let Some(l) = v.learners.iter().find(|l| pod_failed(obs, l)) {
        if !l.name.is_empty() {
            return Some(Action::RemoveMember { id: l.id, ordinal: l.ordinal, reason: RemoveReason::Failed });
        }
        return l.ordinal.map(|ordinal| Action::RecycleMember { ordinal });
    }
    let failed = v.voters.iter().copied().find(|m| pod_failed(obs, m))?;
    if !v.learners.is_empty() || (v.voters.len() as u32) < obs.desired.replicas {
        return None; // a replacement is already under way
    }
    Some(match remove_voter(v, failed, RemoveReason::Failed) {
        Action::Degraded { message, .. } => degraded("FailedMemberUnsafe", message),
        a => a,
    })
}

fn learner_step(v: &View, l: &MemberObs, sts_replicas: u32) -> Action {
    let Some(ordinal) = l.ordinal else {
        return degraded("ForeignLearner", format!("learner {:x} has a peer URL this operator did not make", l.id));
    };
    if ordinal >= sts_replicas {
        return Action::ResizeStatefulSet { replicas: ordinal + 1 };
    }
    let leader_index = v.leader.and_then(|m| m.health.as_ref()).map(|h| h.raft_index).unwrap_or(0);
    let caught_up = l.health.as_ref().is_some_and(|h| h.raft_index as f64 >= leader_index as f64 * PROMOTE_AT);
    // Readiness of the learner's pod is not required: MemberPromote itself
    // refuses a learner that is not in sync, and that error is retried.
    if !caught_up {
        return wait("LearnerCatchingUp", format!("learner {} is not in sync with the leader yet", l.name));
    }
    if v.healthy_voters() + 1 < quorum(v.voters.len() + 1) {
        return wait("PromotionUnsafe", "too few healthy voters to grow the quorum".into());
    }
    Action::PromoteLearner { id: l.id, ordinal }
}

/// Restart outdated pods one at a time, followers first, leader after a MoveLeader.
fn rolling(obs: &Observation, v: &View) -> Option<Action> {
    let outdated = |m: &MemberObs| m.ordinal.and_then(|o| obs.pods.get(&o)).is_some_and(|p| p.outdated);
    let leader = v.leader_id();
    if let Some(m) = v.voters.iter().copied().filter(|m| m.id != leader && outdated(m)).max_by_key(|m| m.ordinal) {
        return m.ordinal.map(|ordinal| Action::RestartPod { ordinal });
    }
    let l = v.leader.filter(|l| outdated(l))?;
    Some(match v.transferee(l.id, outdated) {
        Some(to) => Action::MoveLeader { from: l.id, to: to.id, why: Why::Rolling },
        None => l.ordinal.map(|ordinal| Action::RestartPod { ordinal })?,
    })
}

fn free_fraction(m: &MemberObs) -> f64 {
    m.health.as_ref().map_or(0.0, |h| kvd_api::client::free_fraction(h.db_size, h.db_size_in_use))
}

/// How much a member's size may move after its defragmentation with no
/// data added: kvd's size is the bytes its file holds, and each durable
/// commit writes redb's allocator state anew, a few pages. 1%, at least
/// 256 KiB.
fn defrag_slack(after: i64) -> i64 {
    (after / 100).max(256 << 10)
}

/// Defragment members over `threshold`, followers first; the leader hands
/// leadership over before its turn. A member whose size has not grown past
/// [`defrag_slack`] since its last defragmentation is left alone: what is
/// free in it then is slack the file format keeps.
fn defrag_step(obs: &Observation, v: &View, members: &[MemberObs], threshold: f64, why: Why) -> Option<Action> {
    if !v.all_healthy() {
        return Some(wait("MembersNotReady", "defragmentation waits for every member to be healthy".into()));
    }
    let leader = v.leader_id();
    let wants = |m: &&MemberObs| {
        let Some(h) = &m.health else { return false };
        let grown = obs.defragged.get(&m.id).is_none_or(|&after| h.db_size > after + defrag_slack(after));
        free_fraction(m) >= threshold && free_fraction(m) > 0.0 && grown
    };
    if let Some(m) = members.iter().filter(wants).filter(|m| m.id != leader).max_by_key(|m| m.ordinal) {
        return Some(Action::Defragment { id: m.id, ordinal: m.ordinal, why });
    }
    let l = members.iter().filter(wants).find(|m| m.id == leader)?;
    Some(match v.transferee(l.id, |_| false) {
        Some(to) => Action::MoveLeader { from: l.id, to: to.id, why },
        // A single member has nobody to hand over to: defragment in place.
        None => Action::Defragment { id: l.id, ordinal: l.ordinal, why },
    })
}

/// Compact, defragment (followers first, leader last), then disarm.
fn nospace(obs: &Observation, v: &View, members: &[MemberObs]) -> Action {
    let current = members.iter().filter_map(|m| m.health.as_ref()).map(|h| h.revision).max().unwrap_or(0);
    let target = (current - obs.desired.retention_revisions).max(0);
    if target > obs.last_compacted_revision {
        return Action::Compact { revision: target, why: Why::Nospace };
    }
    if let Some(a) = defrag_step(obs, v, members, NOSPACE_MIN_FREE_FRACTION, Why::Nospace) {
        return a;
    }
    let over = members.iter().filter_map(|m| m.health.as_ref()).any(|h| h.db_size >= obs.desired.quota_bytes);
    if over {
        return degraded(
            "QuotaExhausted",
            "database still over quota after compaction and defragmentation; raise quotaBackendBytes".into(),
        );
    }
    Action::DisarmNospace
}

#[cfg(test)]
#[path = "planner_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "planner_failed_tests.rs"]
mod failed_tests;
