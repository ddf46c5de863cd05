//! Table tests for quorum-loss recovery, through `planner::plan`: when it
//! starts (never with the field off, before the timeout or with a healthy
//! quorum), which member it forces, each step while the ConfigMap holds the
//! key, and a whole recovery until the cluster is back to its size.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::observe::{MemberHealth, PodObs};
use crate::planner::plan;
use crate::planner::tests::{cluster, fail, id, members, set_leader, simulate};

fn t0() -> Timestamp {
    "2026-03-01T10:00:00Z".parse().expect("ts")
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

/// 3 voters (or `n`), all but `survivors` failed; created before t0; the
/// loss seen `lost_for` seconds ago; now = t0 + 1000 s; recovery on.
fn lost(n: u32, survivors: &[u32], lost_for: i64) -> Observation {
    let mut obs = cluster(n);
    obs.desired.quorum_loss_recovery = true;
    obs.uid = "0a1b2c3d-4e5f".into();
    obs.now = at(1000);
    obs.quorum_lost_since = Some(at(1000 - lost_for));
    for o in 0..n {
        obs.pods.get_mut(&o).expect("pod").created = Some(at(-100));
        obs.claims_created.insert(o, at(-100));
    }
    for o in (0..n).filter(|o| !survivors.contains(o)) {
        fail(&mut obs, o, Duration::from_secs(lost_for as u64));
    }
    set_leader(&mut obs, 0);
    obs
}

fn index(obs: &mut Observation, o: u32, raft_index: u64) {
    members(obs)[o as usize].health.as_mut().expect("health").raft_index = raft_index;
}

fn degraded(a: &Action) -> (&'static str, String) {
    match a {
        Action::Degraded { reason, message } => (*reason, message.clone()),
        other => panic!("not degraded: {other:?}"),
    }
}

/// The world after `ForceNewCluster` of `ordinal`: the key recorded at
/// `since`, its pod re-created, and (if `forced`) it leads alone.
fn after_force(obs: &mut Observation, a: &Action, forced: bool) {
    let Action::ForceNewCluster { ordinal, token, since } = a.clone() else { panic!("not a force: {a:?}") };
    let key = ForceKey { member: format!("c-{ordinal}"), token, since };
    obs.pods.insert(
        ordinal,
        PodObs { ready: forced, created: Some(since + SignedDuration::from_secs(5)), ..PodObs::default() },
    );
    let me = id(ordinal);
    let survivor = forced.then(|| SurvivorObs { id: me, leader: me, voters: vec![me] });
    obs.recovery = Some(RecoveryObs { ordinal, key, survivor, others: vec![] });
    if forced {
        let mut m = members(obs)[ordinal as usize].clone();
        m.health = Some(MemberHealth { leader: me, ..m.health.unwrap_or_default() });
        obs.members = Some(vec![m]);
    }
}

/// Applies the recovery's own steps; the rest goes to the planner's simulator.
fn simulate_recovery(obs: &mut Observation, a: &Action) {
    match a {
        Action::RecycleMember { ordinal } => {
            let fresh = obs.now + SignedDuration::from_secs(10);
            obs.pods.insert(*ordinal, PodObs { ready: true, created: Some(fresh), ..PodObs::default() });
            obs.claims_created.insert(*ordinal, fresh);
        }
        Action::EndRecovery { .. } => obs.recovery = None,
        other => simulate(obs, other),
    }
}

#[test]
fn off_it_only_reports() {
    let mut obs = lost(3, &[1], 3600);
    obs.desired.quorum_loss_recovery = false;
    let (reason, message) = degraded(&plan(&obs));
    assert_eq!(reason, "QuorumLost");
    assert!(message.contains("quorumLossRecovery is off"), "{message}");
    assert!(message.contains("spec.backup schedules them"), "no backup yet: {message}");
    // With a backup recorded, the message names it.
    obs.last_backup_key = Some("kvd/ns/demo/20260101T000000Z-r9.snap.zst".into());
    let (_, message) = degraded(&plan(&obs));
    assert!(message.contains("fromBackup") && message.contains("r9.snap.zst"), "{message}");
}

#[test]
fn it_waits_for_the_failed_member_timeout() {
    let obs = lost(3, &[1], 10);
    let (reason, message) = degraded(&plan(&obs));
    assert_eq!(reason, "QuorumLost");
    assert!(message.contains("in 290s"), "{message}");
    let mut obs = lost(3, &[1], 0);
    obs.quorum_lost_since = None;
    assert!(degraded(&plan(&obs)).1.contains("in 300s"), "loss not recorded yet");
    let mut obs = lost(3, &[1], 60);
    obs.desired.failed_member_after = Duration::from_secs(60);
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 1, .. }));
    let obs = lost(3, &[1], 300);
    let token = format!("0a1b2c3d-{}", at(1000).as_second());
    assert_eq!(plan(&obs), Action::ForceNewCluster { ordinal: 1, token, since: at(1000) });
}

#[test]
fn it_forces_the_most_advanced_survivor() {
    // Two survivors of five: the higher raft index wins.
    let mut obs = lost(5, &[1, 3], 600);
    index(&mut obs, 1, 7000);
    index(&mut obs, 3, 7001);
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 3, .. }));
    // A tie: the lowest ordinal.
    index(&mut obs, 1, 7001);
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 1, .. }));
    // A learner is never forced, however advanced.
    index(&mut obs, 1, 9999);
    members(&mut obs)[1].is_learner = true;
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 3, .. }));
    // Nor a member the operator did not make, or one beyond the StatefulSet.
    members(&mut obs)[3].ordinal = None;
    assert_eq!(degraded(&plan(&obs)).0, "QuorumLost");
}

#[test]
fn never_forces_a_member_behind_one_seen_earlier_in_the_loss() {
    let mut obs = lost(3, &[1], 600);
    // c-2 answered with a higher index before it stopped answering.
    obs.quorum_loss_best = Some(record("c-2", 5001, None));
    let (reason, message) = degraded(&plan(&obs));
    assert_eq!(reason, "QuorumLost");
    assert!(message.contains("c-2 reported raft index 5001") && message.contains("c-1 (5000)"), "{message}");
    // Its claim is the one it had then: still waited for.
    obs.quorum_loss_best = Some(record("c-2", 5001, Some(at(-100))));
    assert_eq!(degraded(&plan(&obs)).0, "QuorumLost");
    // Not ahead, or the survivor's own earlier record: no obstacle.
    obs.quorum_loss_best = Some(record("c-2", 5000, None));
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 1, .. }));
    obs.quorum_loss_best = Some(record("c-1", 5001, None));
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 1, .. }));
}

#[test]
fn a_member_ahead_whose_volume_was_replaced_is_not_waited_for() {
    let mut obs = lost(3, &[1], 600);
    // c-2 answered ahead (the old leader, still shutting down), then its
    // claim was deleted and the StatefulSet made a new one: that log is gone.
    obs.quorum_loss_best = Some(record("c-2", 5001, Some(at(-100))));
    obs.claims_created.insert(2, at(900));
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 1, .. }));
    // Or no claim at all.
    obs.claims_created.remove(&2);
    assert!(matches!(plan(&obs), Action::ForceNewCluster { ordinal: 1, .. }));
}

fn record(member: &str, raft_index: u64, claim: Option<jiff::Timestamp>) -> RaftIndexRecord {
    RaftIndexRecord { member: member.into(), raft_index, claim_created: claim.map(Time) }
}

#[test]
fn tokens_differ_per_recovery() {
    let a = lost(3, &[1], 600);
    let mut b = a.clone();
    b.now = at(2000);
    let (Action::ForceNewCluster { token: ta, .. }, Action::ForceNewCluster { token: tb, .. }) = (plan(&a), plan(&b))
    else {
        panic!("no force")
    };
    assert_ne!(ta, tb);
    // What kvd accepts as a token: ASCII letters, digits, '.', '_' and '-'.
    assert!(ta.starts_with("0a1b2c3d-") && ta.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{ta}");
}

#[test]
fn nothing_to_force_when_no_voter_answers() {
    let mut obs = lost(3, &[], 600);
    assert!(degraded(&plan(&obs)).1.contains("no voter answers Status"));
    obs.members = None;
    let (reason, message) = degraded(&plan(&obs));
    assert_eq!(reason, "QuorumLost");
    assert!(message.contains("no member answers MemberList") && message.contains("no voter answers"), "{message}");
}

#[test]
fn never_forced_with_a_healthy_quorum() {
    // A stale quorumLostSince (the status lags) with one member down only.
    let mut obs = cluster(3);
    obs.desired.quorum_loss_recovery = true;
    obs.now = at(1000);
    obs.quorum_lost_since = Some(at(0));
    fail(&mut obs, 2, Duration::from_secs(1));
    assert!(!matches!(plan(&obs), Action::ForceNewCluster { .. } | Action::Degraded { .. }), "{:?}", plan(&obs));
    // Asked directly while a quorum is healthy: it refuses.
    let (_, message) = degraded(&on_quorum_loss(&obs, "test"));
    assert!(message.contains("healthy again"), "{message}");
}

#[test]
fn waits_for_the_forced_member_and_deletes_its_pod_again_if_it_predates_the_key() {
    let mut obs = lost(3, &[1], 600);
    let force = plan(&obs);
    after_force(&mut obs, &force, false);
    // Restarting: it does not answer yet.
    assert!(matches!(plan(&obs), Action::Wait { reason: "QuorumRecovery", .. }));
    // Answers but is not forced, with a pod from before the key: delete it again, same token.
    let Action::ForceNewCluster { token, since, .. } = force.clone() else { unreachable!() };
    obs.pods.get_mut(&1).expect("pod").created = Some(since - SignedDuration::from_secs(1));
    let r = obs.recovery.as_mut().expect("recovery");
    r.survivor = Some(SurvivorObs { id: id(1), leader: 0, voters: vec![id(0), id(1), id(2)] });
    assert_eq!(plan(&obs), Action::ForceNewCluster { ordinal: 1, token, since });
    // Forced, not elected yet: wait.
    obs.pods.get_mut(&1).expect("pod").created = Some(since + SignedDuration::from_secs(1));
    obs.recovery.as_mut().expect("recovery").survivor = Some(SurvivorObs { id: id(1), leader: 0, voters: vec![id(1)] });
    assert!(matches!(plan(&obs), Action::Wait { reason: "QuorumRecovery", .. }));
    // Even with a pod older than the key: it has acted on the key already.
    obs.pods.get_mut(&1).expect("pod").created = Some(since - SignedDuration::from_secs(1));
    assert!(matches!(plan(&obs), Action::Wait { reason: "QuorumRecovery", .. }));
}

#[test]
fn once_it_leads_alone_the_old_members_are_recycled_then_the_key_cleared() {
    let mut obs = lost(3, &[1], 600);
    let force = plan(&obs);
    after_force(&mut obs, &force, true);
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 0 });
    simulate_recovery(&mut obs, &Action::RecycleMember { ordinal: 0 });
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 2 });
    // A claim left from before the key (its pod already new) is stale too.
    obs.pods.get_mut(&2).expect("pod").created = Some(obs.now);
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 2 });
    simulate_recovery(&mut obs, &Action::RecycleMember { ordinal: 2 });
    // The key still set after success: cleared.
    assert_eq!(plan(&obs), Action::EndRecovery { ordinal: 1, outcome: RecoveryEnd::Recovered });
}

#[test]
fn turned_off_mid_way_the_key_is_cleared() {
    let mut obs = lost(3, &[1], 600);
    let force = plan(&obs);
    after_force(&mut obs, &force, false);
    obs.desired.quorum_loss_recovery = false;
    assert_eq!(plan(&obs), Action::EndRecovery { ordinal: 1, outcome: RecoveryEnd::Disabled });
}

#[test]
fn quorum_back_before_the_force_calls_it_off() {
    let mut obs = lost(3, &[1], 600);
    let force = plan(&obs);
    after_force(&mut obs, &force, false);
    // The old members are back and lead; the survivor, restarting, does not
    // answer yet: it may still force itself, so wait.
    let back = cluster(3);
    obs.members = back.members.clone();
    assert!(matches!(plan(&obs), Action::Wait { reason: "QuorumRecovery", .. }));
    // It answers, not forced, following them: called off.
    obs.recovery.as_mut().expect("recovery").survivor =
        Some(SurvivorObs { id: id(1), leader: id(0), voters: vec![id(0), id(1), id(2)] });
    assert_eq!(plan(&obs), Action::EndRecovery { ordinal: 1, outcome: RecoveryEnd::QuorumBack });
    // Forced already (not elected yet): two clusters, for a human.
    let r = obs.recovery.as_mut().expect("recovery");
    r.survivor = Some(SurvivorObs { id: id(1), leader: 0, voters: vec![id(1)] });
    r.others = vec![(id(0), id(0)), (id(2), id(0))];
    assert_eq!(degraded(&plan(&obs)).0, "SplitBrain");
}

#[test]
fn old_members_with_a_leader_of_their_own_are_a_split_brain() {
    let mut obs = lost(3, &[1], 600);
    let force = plan(&obs);
    after_force(&mut obs, &force, true);
    // Whichever MemberList `observe` got: the other members' own Status counts.
    let others = |obs: &mut Observation, o: Vec<(u64, u64)>| obs.recovery.as_mut().expect("recovery").others = o;
    others(&mut obs, vec![(id(0), id(0)), (id(2), id(0))]);
    let (reason, message) = degraded(&plan(&obs));
    assert_eq!(reason, "SplitBrain");
    assert!(message.contains("c-1") && message.contains("force-new-cluster-member"), "{message}");
    // A leader without a quorum of followers cannot commit: only stale members, recycled.
    others(&mut obs, vec![(id(0), id(0))]);
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 0 });
    // Nor does a member that names a dead leader (kvd names the leader of
    // its last committed vote after a restart), or members without a leader.
    others(&mut obs, vec![(id(0), id(2)), (id(2), 0)]);
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 0 });
}

#[test]
fn a_whole_recovery_ends_with_the_cluster_at_its_size() {
    let mut obs = lost(3, &[2], 600);
    let force = plan(&obs);
    assert!(matches!(force, Action::ForceNewCluster { ordinal: 2, .. }), "{force:?}");
    after_force(&mut obs, &force, true);
    let mut steps = vec![force];
    for _ in 0..10 {
        let a = plan(&obs);
        if matches!(a, Action::EndRecovery { .. }) {
            simulate_recovery(&mut obs, &a);
            steps.push(a);
            break;
        }
        simulate_recovery(&mut obs, &a);
        steps.push(a);
    }
    assert_eq!(
        steps[1..],
        [
            Action::RecycleMember { ordinal: 0 },
            Action::RecycleMember { ordinal: 1 },
            Action::EndRecovery { ordinal: 2, outcome: RecoveryEnd::Recovered }
        ]
    );
    // The usual path adds the others back as learners and promotes them.
    let mut rest = Vec::new();
    for _ in 0..20 {
        match plan(&obs) {
            Action::Idle => break,
            // The learner's pod (already there) catches up.
            Action::Wait { reason: "LearnerCatchingUp", .. } => {
                let h = members(&mut obs)[0].health.clone();
                members(&mut obs).iter_mut().filter(|m| m.is_learner).for_each(|m| m.health = h.clone());
            }
            a => {
                simulate(&mut obs, &a);
                rest.push(a);
            }
        }
    }
    assert_eq!(plan(&obs), Action::Idle, "{rest:?}");
    let adds: Vec<_> = rest.iter().filter(|a| matches!(a, Action::AddLearner { .. })).collect();
    assert_eq!(adds, [&Action::AddLearner { ordinal: 0 }, &Action::AddLearner { ordinal: 1 }], "{rest:?}");
    let voters = obs.members.as_deref().unwrap_or_default().iter().filter(|m| !m.is_learner).count();
    assert_eq!(voters, 3);
}

proptest::proptest! {
    /// From any cluster state (some members sick, a learner, any leader), a
    /// long-recorded loss and the field on or off: a member is forced only
    /// with the field on and no healthy quorum, and it is a voter that answers.
    #[test]
    fn forces_only_without_quorum_and_when_asked(
        obs in crate::planner::tests::arb_obs(),
        on: bool,
        sick_leader: bool,
    ) {
        let mut obs = obs;
        obs.desired.quorum_loss_recovery = on;
        obs.now = at(1000);
        obs.quorum_lost_since = Some(at(0));
        if sick_leader {
            set_leader(&mut obs, 0);
        }
        if let Action::ForceNewCluster { ordinal, .. } = plan(&obs) {
            let ms = obs.members.as_deref().unwrap_or_default();
            proptest::prop_assert!(on);
            proptest::prop_assert!(!crate::planner::has_quorum(ms));
            let m = ms.iter().find(|m| m.ordinal == Some(ordinal));
            proptest::prop_assert!(m.is_some_and(|m| !m.is_learner && m.health.is_some()));
        }
    }
}
