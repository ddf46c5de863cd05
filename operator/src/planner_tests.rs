//! Table and property tests for the planner, plus a tiny simulator that
//! applies each planned step to the observation to check whole sequences.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::FAILED_MEMBER_AFTER;
use crate::observe::{AlarmObs, Desired, MemberHealth, PodObs, StsObs};
use crate::resources::Task;

pub(crate) fn id(o: u32) -> u64 {
    0x10 + o as u64
}

pub(crate) fn member(o: u32, leader: u64) -> MemberObs {
    MemberObs {
        id: id(o),
        name: format!("c-{o}"),
        ordinal: Some(o),
        peer_url: format!("http://c-{o}.c-peer.ns.svc:2380"),
        client_url: format!("http://c-{o}.c-peer.ns.svc:2379"),
        is_learner: false,
        health: Some(MemberHealth {
            leader,
            revision: 1000,
            raft_index: 5000,
            db_size: 100 << 20,
            db_size_in_use: 90 << 20,
        }),
    }
}

/// `n` healthy voters, leader ordinal 0, desired = n.
pub(crate) fn cluster(n: u32) -> Observation {
    Observation {
        desired: Desired { replicas: n, ..Desired::default() },
        statefulset: Some(StsObs { replicas: n, template_hash: Some("h1".into()), claim_size: None }),
        pods: (0..n).map(|o| (o, PodObs { ready: true, ..PodObs::default() })).collect(),
        pvcs: (0..n).collect(),
        members: Some((0..n).map(|o| member(o, id(0))).collect()),
        bootstrapped: true,
        ..Observation::default()
    }
}

pub(crate) fn members(obs: &mut Observation) -> &mut Vec<MemberObs> {
    obs.members.as_mut().expect("members")
}

pub(crate) fn fail(obs: &mut Observation, o: u32, for_: Duration) {
    let p = obs.pods.get_mut(&o).expect("pod");
    p.ready = false;
    p.failing_for = Some(for_);
    members(obs)[o as usize].health = None;
}

pub(crate) fn set_leader(obs: &mut Observation, leader: u64) {
    for h in members(obs).iter_mut().filter_map(|m| m.health.as_mut()) {
        h.leader = leader;
    }
}

/// A member whose pod came up: it answers Status and has published its name.
fn start(m: &mut MemberObs, leader: u64) {
    m.health = member(0, leader).health;
    m.name = m.ordinal.map(|o| format!("c-{o}")).unwrap_or_default();
}

/// Applies a step as the real world would (instantly and successfully).
pub(crate) fn simulate(obs: &mut Observation, a: &Action) {
    let leader = members(obs).iter().filter_map(|m| m.health.as_ref()).map(|h| h.leader).max().unwrap_or(0);
    match a {
        Action::AddLearner { ordinal } => {
            // Added, not started yet: no name, no Status.
            let mut m = member(*ordinal, leader);
            m.is_learner = true;
            m.health = None;
            m.name.clear();
            members(obs).push(m);
        }
        Action::ResizeStatefulSet { replicas } => {
            obs.statefulset.as_mut().expect("sts").replicas = *replicas;
            obs.pods.retain(|o, _| o < replicas);
            obs.pvcs.extend(0..*replicas);
            for o in 0..*replicas {
                obs.pods.entry(o).or_insert(PodObs { ready: true, ..PodObs::default() });
            }
            for m in members(obs).iter_mut().filter(|m| m.ordinal < Some(*replicas) && m.health.is_none()) {
                start(m, leader);
            }
        }
        Action::PromoteLearner { id, .. } => {
            members(obs).iter_mut().filter(|m| m.id == *id).for_each(|m| m.is_learner = false)
        }
        Action::RemoveMember { id, .. } => members(obs).retain(|m| m.id != *id),
        Action::MoveLeader { to, .. } => set_leader(obs, *to),
        Action::RestartPod { ordinal } => obs.pods.get_mut(ordinal).expect("pod").outdated = false,
        Action::UpdateStatefulSet => {
            obs.statefulset.as_mut().expect("sts").template_hash = Some(obs.desired.template_hash.clone());
            obs.pods.values_mut().for_each(|p| p.outdated = true);
        }
        Action::Compact { revision, .. } => {
            obs.last_compacted_revision = *revision;
            for h in members(obs).iter_mut().filter_map(|m| m.health.as_mut()) {
                h.db_size_in_use /= 2;
            }
        }
        Action::Defragment { id, .. } => {
            for m in members(obs).iter_mut().filter(|m| m.id == *id) {
                let h = m.health.as_mut().expect("health");
                h.db_size = h.db_size_in_use;
            }
            let size = members(obs).iter().find(|m| m.id == *id).and_then(|m| m.health.as_ref()).map(|h| h.db_size);
            obs.defragged.insert(*id, size.expect("health"));
        }
        Action::DisarmNospace => obs.alarms.clear(),
        Action::MarkExisting => obs.initial_state_new = false,
        Action::EnsureCronJob { task } => {
            let want = obs.desired.cronjobs.get(task).cloned();
            obs.cronjobs.insert(*task, want);
        }
        Action::DeleteCronJob { task } => {
            obs.cronjobs.remove(task);
        }
        Action::RecycleMember { ordinal } => {
            obs.pods.insert(*ordinal, PodObs { ready: true, ..PodObs::default() });
            members(obs).iter_mut().filter(|m| m.ordinal == Some(*ordinal)).for_each(|m| start(m, leader));
        }
        other => panic!("simulator cannot apply {other:?}"),
    }
}

/// Plans and applies until Idle; returns the steps.
pub(crate) fn run(obs: &mut Observation) -> Vec<Action> {
    let mut steps = Vec::new();
    for _ in 0..50 {
        let a = plan(obs);
        if a == Action::Idle {
            return steps;
        }
        simulate(obs, &a);
        steps.push(a);
    }
    panic!("no convergence: {steps:?}");
}

#[test]
fn bootstrap_and_objects() {
    let mut obs = cluster(3);
    obs.statefulset = None;
    assert_eq!(plan(&obs), Action::Bootstrap { replicas: 3 });
    let mut obs = cluster(3);
    obs.missing = vec![Owned::Pdb];
    assert_eq!(plan(&obs), Action::EnsureObjects { missing: vec![Owned::Pdb] });
    obs.missing.clear();
    obs.members = None;
    obs.bootstrapped = false;
    assert!(matches!(plan(&obs), Action::Wait { reason: "Bootstrapping", .. }));
    // Members answer but none has a leader yet: still forming, not quorum loss.
    let mut obs = cluster(3);
    obs.bootstrapped = false;
    set_leader(&mut obs, 0);
    assert!(matches!(plan(&obs), Action::Wait { reason: "Bootstrapping", .. }));
}

/// Once formed, members start with `existing`: a member that loses its
/// volume then cannot bootstrap a second cluster beside the first. Found by
/// e2e, where two members on fresh volumes formed one while the third was
/// being forced.
#[test]
fn formed_cluster_switches_to_existing() {
    let mut obs = cluster(3);
    obs.initial_state_new = true;
    assert_eq!(plan(&obs), Action::MarkExisting);
    obs.bootstrapped = false;
    set_leader(&mut obs, 0);
    assert!(matches!(plan(&obs), Action::Wait { reason: "Bootstrapping", .. }));
    // Quorum loss comes first (recovery does not wait for the ConfigMap).
    let mut obs = cluster(3);
    obs.initial_state_new = true;
    fail(&mut obs, 1, Duration::from_secs(1));
    fail(&mut obs, 2, Duration::from_secs(1));
    assert!(matches!(plan(&obs), Action::Degraded { reason: "QuorumLost", .. }));
    let mut obs = cluster(3);
    obs.initial_state_new = true;
    assert_eq!(run(&mut obs), vec![Action::MarkExisting]);
}

#[test]
fn steady_state_is_idle() {
    for n in [1, 3, 5] {
        assert_eq!(plan(&cluster(n)), Action::Idle);
    }
}

/// A grown storage size is the last step: claims are expanded only when
/// nothing else is due (here a pending rolling restart comes first), and
/// only the members' claims.
#[test]
fn volume_expansion_comes_last() {
    use crate::observe::ClaimObs;
    let mut obs = cluster(3);
    let small = ClaimObs { requested: Some(1 << 30), capacity: Some(1 << 30) };
    obs.claim_sizes = (0..4).map(|o| (o, small.clone())).collect();
    obs.desired.storage_size = "2Gi".into();
    obs.desired.storage_bytes = Some(2 << 30);
    obs.pods.get_mut(&1).expect("pod").outdated = true;
    assert_eq!(plan(&obs), Action::RestartPod { ordinal: 1 });
    obs.pods.get_mut(&1).expect("pod").outdated = false;
    assert_eq!(plan(&obs), Action::ExpandClaim { ordinal: 0 });
    for o in 0..3 {
        obs.claim_sizes.get_mut(&o).expect("claim").requested = Some(2 << 30);
    }
    assert!(matches!(plan(&obs), Action::Wait { reason: "VolumesExpanding", .. }));
    for o in 0..3 {
        obs.claim_sizes.get_mut(&o).expect("claim").capacity = Some(2 << 30);
    }
    // Ordinal 3's claim belongs to no member: left as it is.
    assert_eq!(plan(&obs), Action::Idle);
}

/// Mode CertManager: no member is created before cert-manager has issued
/// the certificates; a formed cluster is not held back by a renewal.
#[test]
fn first_members_wait_for_their_certificates() {
    let mut obs = Observation { desired: Desired { replicas: 3, ..Desired::default() }, ..Observation::default() };
    obs.certs_pending = Some("cert-manager has not issued c-server-tls: Issuer ca not found".into());
    obs.desired.tls_problem = Some("secret ns/c-operator-tls does not exist".into());
    let Action::Wait { reason, message } = plan(&obs) else { panic!("not waiting: {:?}", plan(&obs)) };
    assert_eq!(reason, "CertificatesPending");
    assert!(message.contains("Issuer ca not found"), "{message}");
    obs.certs_pending = None;
    obs.desired.tls_problem = None;
    assert_eq!(plan(&obs), Action::Bootstrap { replicas: 3 });
    let mut formed = cluster(3);
    formed.certs_pending = Some("renewing".into());
    assert_eq!(plan(&formed), Action::Idle);
}

#[test]
fn even_replicas_need_opt_in() {
    let mut obs = cluster(4);
    assert!(matches!(plan(&obs), Action::Degraded { reason: "EvenReplicas", .. }));
    obs.desired.allow_even = true;
    assert_eq!(plan(&obs), Action::Idle);
    obs.desired.replicas = 0;
    assert!(matches!(plan(&obs), Action::Degraded { reason: "InvalidSpec", .. }));
    let mut obs = cluster(3);
    obs.desired.tls_problem = Some("secret ns/tls has no key ca.crt".into());
    assert_eq!(
        plan(&obs),
        Action::Degraded { reason: "TLSSecretInvalid", message: "secret ns/tls has no key ca.crt".into() }
    );
    // Auth without client TLS: the operator could not authenticate.
    let mut obs = cluster(3);
    obs.desired.auth = Some(true);
    assert!(matches!(plan(&obs), Action::Degraded { reason: "AuthNeedsClientTLS", .. }));
    // A TLS change a formed cluster cannot make: nothing else is done (the
    // pods are not rolled onto the other scheme).
    let mut obs = cluster(3);
    obs.desired.template_hash = "changed".into();
    obs.desired.tls_conflict = Some("the cluster formed with client TLS off".into());
    assert_eq!(
        plan(&obs),
        Action::Degraded { reason: "TLSChangeUnsupported", message: "the cluster formed with client TLS off".into() }
    );
}

#[test]
fn quorum_loss_is_reported() {
    let mut obs = cluster(3);
    fail(&mut obs, 1, Duration::from_secs(1));
    fail(&mut obs, 2, Duration::from_secs(1));
    assert!(matches!(plan(&obs), Action::Degraded { reason: "QuorumLost", .. }));
    let Action::Degraded { message, .. } = plan(&obs) else { panic!("not degraded") };
    assert!(message.contains("quorumLossRecovery is off"), "{message}");
    // Nobody answers at all after the cluster formed.
    let mut obs = cluster(3);
    obs.members = None;
    assert!(matches!(plan(&obs), Action::Degraded { reason: "QuorumLost", .. }));
    // No leader although members answer.
    let mut obs = cluster(3);
    set_leader(&mut obs, 0);
    assert!(matches!(plan(&obs), Action::Degraded { reason: "QuorumLost", .. }));
}

#[test]
fn scale_up_one_learner_at_a_time() {
    let mut obs = cluster(3);
    obs.desired.replicas = 5;
    assert_eq!(plan(&obs), Action::AddLearner { ordinal: 3 });
    simulate(&mut obs, &Action::AddLearner { ordinal: 3 });
    assert_eq!(plan(&obs), Action::ResizeStatefulSet { replicas: 4 });
    simulate(&mut obs, &Action::ResizeStatefulSet { replicas: 4 });
    // Learner behind the leader: wait, and never add another member meanwhile.
    members(&mut obs)[3].health.as_mut().expect("h").raft_index = 100;
    assert!(matches!(plan(&obs), Action::Wait { reason: "LearnerCatchingUp", .. }));
    members(&mut obs)[3].health.as_mut().expect("h").raft_index = 4600;
    assert_eq!(plan(&obs), Action::PromoteLearner { id: id(3), ordinal: 3 });
    let steps = run(&mut obs);
    assert_eq!(
        steps,
        vec![
            Action::PromoteLearner { id: id(3), ordinal: 3 },
            Action::AddLearner { ordinal: 4 },
            Action::ResizeStatefulSet { replicas: 5 },
            Action::PromoteLearner { id: id(4), ordinal: 4 },
        ]
    );
}

#[test]
fn scale_down_moves_leadership_first() {
    let mut obs = cluster(5);
    set_leader(&mut obs, id(4));
    obs.desired.replicas = 3;
    let steps = run(&mut obs);
    assert_eq!(
        steps,
        vec![
            Action::MoveLeader { from: id(4), to: id(0), why: Why::ScaleDown },
            Action::RemoveMember { id: id(4), ordinal: Some(4), reason: RemoveReason::ScaleDown },
            Action::ResizeStatefulSet { replicas: 4 },
            Action::RemoveMember { id: id(3), ordinal: Some(3), reason: RemoveReason::ScaleDown },
            Action::ResizeStatefulSet { replicas: 3 },
        ]
    );
}

#[test]
fn scale_down_waits_for_health() {
    let mut obs = cluster(5);
    obs.desired.replicas = 3;
    fail(&mut obs, 1, Duration::from_secs(10));
    assert!(matches!(plan(&obs), Action::Wait { reason: "MembersNotReady", .. }));
}

#[test]
fn stale_volume_blocks_scale_up_with_retain() {
    let mut obs = cluster(3);
    obs.desired.replicas = 5;
    obs.pvcs.insert(3);
    assert!(matches!(plan(&obs), Action::Degraded { reason: "StaleVolume", .. }));
}

#[path = "planner_maintenance_tests.rs"]
mod maintenance;

pub(crate) fn arb_obs() -> impl Strategy<Value = Observation> {
    (
        1u32..=7,
        0u32..=7,
        proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..5000), 7),
        any::<bool>(),
        0u32..7,
    )
        .prop_map(|(n, want, flags, learner, leader)| {
            let mut obs = cluster(n);
            obs.desired.replicas = want.max(1);
            obs.desired.allow_even = true;
            set_leader(&mut obs, id(leader % n));
            for (o, (sick, long, idx)) in flags.into_iter().take(n as usize).enumerate() {
                let o = o as u32;
                if sick && o != leader % n {
                    fail(&mut obs, o, if long { FAILED_MEMBER_AFTER } else { Duration::from_secs(1) });
                } else if let Some(h) = members(&mut obs)[o as usize].health.as_mut() {
                    h.raft_index = idx;
                }
            }
            if learner && n > 1 {
                members(&mut obs)[n as usize - 1].is_learner = true;
            }
            obs
        })
}

proptest! {
    #[test]
    fn never_removes_a_voter_below_quorum(obs in arb_obs()) {
        if let Action::RemoveMember { id, .. } = plan(&obs) {
            let ms = obs.members.as_deref().unwrap_or_default();
            let rest: Vec<_> = ms.iter().filter(|m| !m.is_learner && m.id != id).collect();
            let healthy = rest.iter().filter(|m| m.health.as_ref().is_some_and(|h| h.leader != 0)).count();
            prop_assert!(healthy >= quorum(rest.len()));
        }
    }

    #[test]
    fn never_adds_while_a_learner_exists(obs in arb_obs()) {
        let has_learner = obs.members.as_deref().unwrap_or_default().iter().any(|m| m.is_learner);
        if has_learner {
            let adds = matches!(plan(&obs), Action::AddLearner { .. });
            prop_assert!(!adds);
        }
    }

    #[test]
    fn never_restarts_or_defrags_the_leader_of_many(obs in arb_obs()) {
        let ms = obs.members.as_deref().unwrap_or_default();
        let voters = ms.iter().filter(|m| !m.is_learner).count();
        let leader = ms.iter().filter_map(|m| m.health.as_ref()).map(|h| h.leader).max().unwrap_or(0);
        let leader_ordinal = ms.iter().find(|m| m.id == leader).and_then(|m| m.ordinal);
        match plan(&obs) {
            Action::RestartPod { ordinal } if voters > 1 => prop_assert_ne!(Some(ordinal), leader_ordinal),
            Action::Defragment { id, .. } if voters > 1 => prop_assert_ne!(id, leader),
            _ => {}
        }
    }
}

proptest! {
    /// From any healthy cluster, any odd size, a template change, a NOSPACE
    /// alarm and a due defragmentation, the steps reach Idle with the desired
    /// voters and never leave a removal below quorum.
    #[test]
    fn converges_from_healthy_states(n in 1u32..=7, want in 0u32..=3, leader in 0u32..7, roll: bool, nospace: bool) {
        let mut obs = cluster(n);
        obs.desired.replicas = want * 2 + 1;
        set_leader(&mut obs, id(leader % n));
        if roll {
            obs.desired.template_hash = "h2".into();
        }
        if nospace {
            obs.alarms = vec![AlarmObs { member_id: id(0), kind: AlarmKind::Nospace }];
        }
        let steps = run(&mut obs);
        let voters = obs.members.as_deref().unwrap_or_default().iter().filter(|m| !m.is_learner).count();
        prop_assert_eq!(voters as u32, want * 2 + 1);
        prop_assert!(obs.alarms.is_empty());
        prop_assert!(obs.pods.values().all(|p| !p.outdated));
        let adds = steps.iter().filter(|a| matches!(a, Action::AddLearner { .. })).count();
        prop_assert_eq!(adds as u32, (want * 2 + 1).saturating_sub(n));
    }
}

#[test]
fn auth_is_turned_on_or_off_once_every_member_is_healthy() {
    let mut obs = cluster(3);
    obs.desired.client_tls = true;
    obs.desired.auth = Some(true);
    obs.auth_enabled = Some(false);
    assert_eq!(plan(&obs), Action::SetAuth { enable: true });
    obs.auth_enabled = Some(true);
    assert_eq!(plan(&obs), Action::Idle);
    obs.desired.auth = Some(false);
    assert_eq!(plan(&obs), Action::SetAuth { enable: false });
    // Unknown (AuthStatus did not answer), or not asked for: nothing.
    obs.auth_enabled = None;
    assert_eq!(plan(&obs), Action::Idle);
    obs.desired.auth = None;
    obs.auth_enabled = Some(true);
    assert_eq!(plan(&obs), Action::Idle);
    // Not while a member is unhealthy.
    let mut obs = cluster(3);
    obs.desired.client_tls = true;
    obs.desired.auth = Some(true);
    obs.auth_enabled = Some(false);
    if let Some(m) = obs.members.as_mut().and_then(|m| m.get_mut(1)) {
        m.health = None;
    }
    assert!(matches!(plan(&obs), Action::Wait { .. }), "{:?}", plan(&obs));
}

#[test]
fn a_new_image_waits_for_its_backup_and_is_refused_when_it_skips_a_minor_version() {
    let mut obs = cluster(3);
    for p in obs.pods.values_mut() {
        p.image = Some("r/kvd:0.1.0".into());
    }
    obs.desired.template_hash = "new".into();
    obs.desired.image = "r/kvd:0.3.0".into();
    assert!(matches!(plan(&obs), Action::Degraded { reason: "UpgradeRefused", .. }), "{:?}", plan(&obs));
    obs.desired.image = "r/kvd:0.2.0".into();
    obs.desired.upgrade_backup = Some(("upgrade to r/kvd:0.2.0".into(), "demo-backup-now-x".into()));
    assert_eq!(plan(&obs), Action::UpgradeBackup { token: "upgrade to r/kvd:0.2.0".into() });
    obs.jobs = vec![crate::maintenance::JobObs {
        name: "demo-backup-now-x".into(),
        task: Task::Backup,
        succeeded: true,
        failed: false,
        completed: None,
        message: None,
        failure: None,
    }];
    assert_eq!(plan(&obs), Action::UpdateStatefulSet);
    // Without spec.backup the template goes at once.
    obs.desired.upgrade_backup = None;
    obs.jobs.clear();
    assert_eq!(plan(&obs), Action::UpdateStatefulSet);
}
