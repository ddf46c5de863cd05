//! Quorum-loss recovery (`spec.quorumLossRecovery`), the planner's steps for
//! it, and what `observe` gathers for them.
//!
//! The steps, one per reconcile, each safe to repeat:
//! 1. quorum lost for `failedMemberTimeoutSeconds` (recorded in
//!    `status.quorumLostSince`), recovery on: pick the voter that answers
//!    Status with the highest raft index (tie: lowest ordinal), unless
//!    another member reported a higher one during this loss
//!    (`status.quorumLossBestIndex`: it may only be slow to answer), and
//!    `ForceNewCluster` it: the ConfigMap gets `force-new-cluster-member =
//!    <member>/<token>` (kvd's `--force-new-cluster-member` through an
//!    optional env var, so no pod template changes) and the time it was set,
//!    then its pod is deleted. kvd restarts that member alone with its data
//!    and records the token in its data dir, so the value, while it stays
//!    set, never acts twice.
//! 2. until the member leads alone (asked directly: its own Status and
//!    MemberList): wait; delete its pod again if it predates the key.
//! 3. then `RecycleMember` every other ordinal whose pod or claim predates the
//!    key (they hold the old cluster's data and membership: left running,
//!    they could elect a leader of their own).
//! 4. then `EndRecovery` clears the key; the usual scale-up path adds the
//!    others back as learners and promotes them.
//!
//! The ConfigMap is the record of a recovery under way (written before the
//! pod is deleted), so a crash of the operator between steps loses nothing.
//! Turning the field off mid-way clears the key (no further forcing; members
//! not recycled yet are left to a human or to the failed-member path). If
//! the old members regain quorum and the survivor, not forced, follows
//! them, the key is cleared too; if it was forced, there are two leaders, which is
//! reported (`SplitBrain`) and left to a human. That risk is inherent to
//! forcing a minority, and why the field is opt-in: set it only when members
//! that are gone for `failedMemberTimeoutSeconds` are not coming back.
//!
//! Times: `since` is the operator's clock, creation times the API server's;
//! a skew makes at worst an extra delete of a fresh pod or claim (harmless
//! while the key is set: nothing is added back before it is cleared) or, if
//! the operator's clock is behind by more than the time between a pod's
//! creation and the key, a wait that a human ends by deleting the pod.

use std::collections::BTreeSet;

use crate::crd::RaftIndexRecord;
use crate::etcd::EtcdClient;
use crate::naming;
use crate::observe::{MemberObs, Observation};
use crate::planner::{Action, healthy, quorum};
use crate::resources::ForceKey;

/// A recovery under way: the ConfigMap's keys, and the forced member's own view.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveryObs {
    pub ordinal: u32,
    pub key: ForceKey,
    /// What the forced member says when asked directly; None if it does not answer.
    pub survivor: Option<SurvivorObs>,
    /// (member id, leader it names) from the Status of every other member
    /// that answers, whether or not the MemberList `observe` got lists it.
    pub others: Vec<(u64, u64)>,
}

/// The forced member's Status and MemberList, asked of it alone.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SurvivorObs {
    pub id: u64,
    /// The leader it knows (0 = none).
    pub leader: u64,
    /// Voter ids in its MemberList.
    pub voters: Vec<u64>,
}

impl SurvivorObs {
    /// Its membership is itself alone: it has been forced.
    fn forced(&self) -> bool {
        self.voters == [self.id]
    }

    fn leads_alone(&self) -> bool {
        self.forced() && self.leader == self.id
    }
}

/// How a recovery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryEnd {
    /// The forced member leads alone and the others were recycled.
    Recovered,
    /// `quorumLossRecovery` was turned off.
    Disabled,
    /// The old members regained quorum before the forced member restarted.
    QuorumBack,
}

/// The recovery recorded in the ConfigMap `data` of cluster `name`, if any
/// (`survivor` is filled in by `ask_survivor`).
pub fn from_config(name: &str, data: &std::collections::BTreeMap<String, String>) -> Option<RecoveryObs> {
    let key = crate::resources::force_key(data)?;
    let ordinal = naming::ordinal_from_name(name, &key.member)?;
    Some(RecoveryObs { ordinal, key, survivor: None, others: Vec::new() })
}

/// (member id, leader) from the Status of each of `endpoints` that answers.
pub async fn ask_others(etcd: &EtcdClient, endpoints: &[String]) -> Vec<(u64, u64)> {
    let answers = futures::future::join_all(endpoints.iter().map(|e| etcd.status(e))).await;
    answers.into_iter().flatten().map(|s| (s.header.as_ref().map(|h| h.member_id).unwrap_or(0), s.leader)).collect()
}

/// Asks the member at `endpoint` for its own Status and MemberList.
pub async fn ask_survivor(etcd: &EtcdClient, endpoint: &str) -> Option<SurvivorObs> {
    let status = etcd.status(endpoint).await.ok()?;
    let list = etcd.member_list(&[endpoint.to_string()]).await.ok()?;
    Some(SurvivorObs {
        id: status.header.as_ref().map(|h| h.member_id).unwrap_or(0),
        leader: status.leader,
        voters: list.iter().filter(|m| !m.is_learner).map(|m| m.id).collect(),
    })
}

/// Unique per recovery: the KvCluster's uid (its first 8 characters) and the time.
pub fn token(obs: &Observation) -> String {
    let uid: String = obs.uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect();
    let uid = if uid.is_empty() { "kvc".to_string() } else { uid };
    format!("{uid}-{}", obs.now.as_second())
}

/// How to start over from a backup when no member can be recovered.
fn restore_hint(obs: &Observation) -> String {
    match &obs.last_backup_key {
        Some(k) => format!("create a KvCluster with spec.bootstrap.fromBackup naming the last backup, key {k}"),
        None => "restore from a snapshot (no backup recorded: spec.backup schedules them)".to_string(),
    }
}

/// The step when quorum is lost and no recovery is under way: Degraded, or
/// with recovery on and the loss old enough, force the best survivor.
pub fn on_quorum_loss(obs: &Observation, detail: &str) -> Action {
    let d = &obs.desired;
    if !d.quorum_loss_recovery {
        return lost(format!("{detail}; quorumLossRecovery is off: bring members back, or {}", restore_hint(obs)));
    }
    let members = obs.members.as_deref().unwrap_or_default();
    let voters: Vec<&MemberObs> = members.iter().filter(|m| !m.is_learner).collect();
    // The caller saw no quorum; never force while a quorum of voters is healthy.
    if members.iter().filter(|m| !m.is_learner && healthy(m)).count() >= quorum(voters.len()) && !voters.is_empty() {
        return lost(format!("{detail}; a quorum of voters is healthy again, not forcing"));
    }
    let lost_for = obs.quorum_lost_since.map(|s| obs.now.duration_since(s).as_secs().max(0) as u64);
    let wait = d.failed_member_after.as_secs();
    match lost_for {
        Some(secs) if secs >= wait => {}
        _ => {
            let left = wait - lost_for.unwrap_or(0).min(wait);
            return lost(format!("{detail}; quorumLossRecovery forces the most advanced member in {left}s"));
        }
    }
    let replicas = obs.statefulset.as_ref().map(|s| s.replicas).unwrap_or(0);
    let best = voters
        .iter()
        .filter(|m| m.ordinal.is_some_and(|o| o < replicas))
        .filter_map(|m| Some((m, m.health.as_ref()?.raft_index)))
        .max_by_key(|(m, index)| (*index, std::cmp::Reverse(m.ordinal)));
    let Some((m, index, ordinal)) = best.and_then(|(m, index)| Some((m, index, m.ordinal?))) else {
        return lost(format!("{detail}; no voter answers Status: no member to recover from; {}", restore_hint(obs)));
    };
    // A member that was ahead earlier in this loss may only be slow to
    // answer now, unless the volume that held its log has been replaced.
    let ahead = obs.quorum_loss_best.as_ref().filter(|r| r.raft_index > index && r.member != m.name);
    if let Some(r) = ahead.filter(|r| !volume_replaced(obs, r)) {
        return lost(format!(
            "{detail}; {} reported raft index {} during this loss, more than {} ({index}), the best that \
             answers now: waiting for it (quorumLossRecovery never forces a member behind another)",
            r.member, r.raft_index, m.name
        ));
    }
    Action::ForceNewCluster { ordinal, token: token(obs), since: obs.now }
}

/// The claim of the member in record `r` is not the one it had when it
/// reported: deleted, or created again. Unknown when the record has no claim
/// time (then the member is waited for).
fn volume_replaced(obs: &Observation, r: &RaftIndexRecord) -> bool {
    let Some(then) = r.claim_created.as_ref() else { return false };
    // Member names are `<cluster>-<ordinal>`, the pods' names.
    let ordinal = r.member.rsplit_once('-').and_then(|(_, o)| o.parse::<u32>().ok());
    let now = ordinal.and_then(|o| obs.claims_created.get(&o));
    now != Some(&then.0)
}

/// The step while a recovery is under way (the ConfigMap holds the key).
pub fn step(obs: &Observation, r: &RecoveryObs) -> Action {
    if !obs.desired.quorum_loss_recovery {
        return Action::EndRecovery { ordinal: r.ordinal, outcome: RecoveryEnd::Disabled };
    }
    let members = obs.members.as_deref().unwrap_or_default();
    let name = &r.key.member;
    let survivor = r.survivor.as_ref();
    let replicas = obs.statefulset.as_ref().map(|s| s.replicas).unwrap_or(0);
    if let Some(s) = survivor.filter(|s| s.forced()) {
        // Another member that leads, followed by a quorum of the old
        // membership: the old cluster is back, and two clusters take writes.
        // (A member that merely names a leader proves little: it keeps naming
        // a leader that died until its own election timeout.)
        let old_size = (replicas as usize).max(members.iter().filter(|m| !m.is_learner).count());
        let followers = |l: u64| r.others.iter().filter(|(id, leader)| *leader == l && *id != s.id).count();
        let others: BTreeSet<u64> = r
            .others
            .iter()
            .filter(|(id, leader)| id == leader && *id != s.id && followers(*id) >= quorum(old_size))
            .map(|(id, _)| *id)
            .collect();
        if !others.is_empty() {
            return Action::Degraded {
                reason: "SplitBrain",
                message: format!(
                    "{name} was forced to a new cluster, but old members follow leader(s) {others:x?}: stop them \
                     (or the forced member), keep one side, recycle the other's volumes, then clear {} in the ConfigMap",
                    crate::resources::FORCE_MEMBER
                ),
            };
        }
    }
    if survivor.is_some_and(SurvivorObs::leads_alone) {
        let since = r.key.since;
        let older = |t: Option<&jiff::Timestamp>| t.is_some_and(|t| *t < since);
        let stale = (0..replicas)
            .filter(|o| *o != r.ordinal)
            .find(|o| older(obs.pods.get(o).and_then(|p| p.created.as_ref())) || older(obs.claims_created.get(o)));
        return match stale {
            Some(ordinal) => Action::RecycleMember { ordinal },
            None => Action::EndRecovery { ordinal: r.ordinal, outcome: RecoveryEnd::Recovered },
        };
    }
    let forced = survivor.is_some_and(SurvivorObs::forced);
    let voters: Vec<&MemberObs> = members.iter().filter(|m| !m.is_learner).collect();
    // Called off only once the survivor itself is seen following the old
    // cluster, with a quorum of voters: while it restarts it may still pick
    // the key up and force.
    let follows_old = survivor.filter(|s| !s.forced() && s.leader != 0).map(|s| s.leader);
    let with_it = members.iter().filter(|m| !m.is_learner && m.health.as_ref().map(|h| h.leader) == follows_old);
    if follows_old.is_some() && !voters.is_empty() && with_it.count() >= quorum(voters.len()) {
        return Action::EndRecovery { ordinal: r.ordinal, outcome: RecoveryEnd::QuorumBack };
    }
    let pod_created = obs.pods.get(&r.ordinal).and_then(|p| p.created);
    if !forced && pod_created.is_some_and(|t| t < r.key.since) {
        // Its pod started before the key was set (the delete failed or was
        // lost): delete it again, with the same key.
        return Action::ForceNewCluster { ordinal: r.ordinal, token: r.key.token.clone(), since: r.key.since };
    }
    Action::Wait {
        reason: "QuorumRecovery",
        message: format!("waiting for {name} to restart as the only member of a new cluster (token {})", r.key.token),
    }
}

fn lost(message: String) -> Action {
    Action::Degraded { reason: "QuorumLost", message }
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
