//! Builds the KvCluster status from the observation, the planned action and
//! its outcome: phase, members, leader and the five conditions (Available,
//! Progressing, Degraded, QuotaAlarm, Reconfiguring), keeping each
//! condition's lastTransitionTime while its status does not change, and
//! `lastCompaction`/`lastDefrag`: the newest of the NOSPACE remediation's,
//! the maintenance Jobs' and the recorded ones, `lastBackup` and
//! `lastBackupFailure` likewise, the backup request acted on, the checked
//! backup a new cluster starts from, `quorumLostSince` and a refused
//! volume expansion (`volumeExpansionRefused`). A
//! quorum-loss recovery shows as phase Recovering and Degraded reason
//! QuorumRecovery.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::act::Outcome;
use crate::crd::{KvCluster, KvClusterStatus, MemberStatus, RaftIndexRecord, TlsMode, TlsStatus};
use crate::maintenance::{newest, records};
use crate::naming;
use crate::observe::{AlarmKind, Observation};
use crate::planner::{Action, Why};

/// Phase shown in `kubectl get kvc`.
pub fn phase(obs: &Observation, action: &Action) -> &'static str {
    match action {
        Action::Bootstrap { .. } | Action::Wait { reason: "Bootstrapping", .. } => "Creating",
        Action::Degraded { .. } => "Degraded",
        Action::ForceNewCluster { .. } | Action::EndRecovery { .. } => "Recovering",
        _ if obs.recovery.is_some() => "Recovering",
        Action::AddLearner { .. }
        | Action::PromoteLearner { .. }
        | Action::RemoveMember { .. }
        | Action::ResizeStatefulSet { .. }
        | Action::RecycleMember { .. }
        | Action::MoveLeader { why: Why::ScaleDown, .. } => "Scaling",
        Action::UpdateStatefulSet
        | Action::RestartPod { .. }
        | Action::UpgradeBackup { .. }
        | Action::MoveLeader { why: Why::Rolling, .. } => "Upgrading",
        _ if obs.alarms.iter().any(|a| a.kind == AlarmKind::Nospace) => "Remediating",
        _ => "Running",
    }
}

fn is_change(a: &Action) -> bool {
    !matches!(a, Action::Idle | Action::Degraded { .. } | Action::Wait { .. })
}

fn cond(prev: &[Condition], type_: &str, ok: bool, reason: &str, message: String, gen_: Option<i64>) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: gen_,
        last_transition_time: since,
    }
}

/// The highest raft index of a voter: answering now or recorded earlier.
fn best_index(cluster: &str, obs: &Observation, prev: Option<RaftIndexRecord>) -> Option<RaftIndexRecord> {
    let now = obs.members.iter().flatten().filter(|m| !m.is_learner).filter_map(|m| {
        let member = if m.name.is_empty() { naming::member_name(cluster, m.ordinal?) } else { m.name.clone() };
        let claim_created = m.ordinal.and_then(|o| obs.claims_created.get(&o)).map(|t| Time(*t));
        Some(RaftIndexRecord { member, raft_index: m.health.as_ref()?.raft_index, claim_created })
    });
    prev.into_iter().chain(now).max_by_key(|r| r.raft_index)
}

/// The status to write after this reconcile.
pub fn build(kc: &KvCluster, obs: &Observation, action: &Action, out: &Outcome) -> KvClusterStatus {
    let prev = kc.status.clone().unwrap_or_default();
    let name = kube::ResourceExt::name_any(kc);
    let gen_ = kc.metadata.generation;
    let members = obs.members.as_deref().unwrap_or_default();
    let leader_id = members.iter().filter_map(|m| m.health.as_ref()).map(|h| h.leader).find(|l| *l != 0);
    let leader = leader_id.and_then(|l| members.iter().find(|m| m.id == l));
    let voters = members.iter().filter(|m| !m.is_learner).count() as i32;
    let nospace = obs.alarms.iter().any(|a| a.kind == AlarmKind::Nospace);
    let jobs = records(&obs.jobs);
    let member_status = members
        .iter()
        .map(|m| {
            let h = m.health.clone().unwrap_or_default();
            let alarms =
                obs.alarms.iter().filter(|a| a.member_id == m.id).map(|a| format!("{:?}", a.kind).to_uppercase());
            MemberStatus {
                name: if m.name.is_empty() {
                    m.ordinal.map(|o| naming::member_name(&name, o)).unwrap_or_default()
                } else {
                    m.name.clone()
                },
                id: format!("{:x}", m.id),
                peer_url: m.peer_url.clone(),
                client_url: m.client_url.clone(),
                is_learner: m.is_learner,
                healthy: m.health.as_ref().is_some_and(|h| h.leader != 0),
                db_size: h.db_size,
                db_size_in_use: h.db_size_in_use,
                revision: h.revision,
                alarms: alarms.collect(),
            }
        })
        .collect::<Vec<_>>();
    let (degraded, deg_reason, deg_msg) = match action {
        Action::Degraded { reason, message } => (true, *reason, message.clone()),
        Action::ForceNewCluster { ordinal, token, .. } => {
            let m = naming::member_name(&name, *ordinal);
            (true, "QuorumRecovery", format!("restarting {m} as the only member of a new cluster (token {token})"))
        }
        Action::Wait { reason: "QuorumRecovery", message } => (true, "QuorumRecovery", message.clone()),
        a if obs.recovery.is_some() => (true, "QuorumRecovery", format!("{a:?}")),
        _ => (false, "AsExpected", String::new()),
    };
    let quorum_lost = obs.bootstrapped && obs.members.as_deref().is_none_or(|m| !crate::planner::has_quorum(m));
    let available = leader.is_some() && !matches!(action, Action::Degraded { reason: "QuorumLost", .. });
    let reconfiguring = matches!(phase(obs, action), "Scaling") || members.iter().any(|m| m.is_learner);
    let (wait_reason, wait_msg) = match action {
        Action::Wait { reason, message } => (*reason, message.clone()),
        a => (crate::metrics::action_kind(a), format!("{a:?}")),
    };
    let progressing = is_change(action) || matches!(action, Action::Wait { .. });
    let conditions = vec![
        cond(
            &prev.conditions,
            "Available",
            available,
            if available { "QuorumHealthy" } else { "NoQuorum" },
            String::new(),
            gen_,
        ),
        cond(
            &prev.conditions,
            "Progressing",
            progressing,
            if progressing { wait_reason } else { "Idle" },
            if progressing { wait_msg } else { String::new() },
            gen_,
        ),
        cond(&prev.conditions, "Degraded", degraded, deg_reason, deg_msg, gen_),
        cond(&prev.conditions, "QuotaAlarm", nospace, if nospace { "NOSPACE" } else { "NoAlarm" }, String::new(), gen_),
        cond(
            &prev.conditions,
            "Reconfiguring",
            reconfiguring,
            if reconfiguring { "MembershipChange" } else { "Stable" },
            String::new(),
            gen_,
        ),
    ];
    KvClusterStatus {
        phase: Some(phase(obs, action).into()),
        observed_generation: gen_,
        replicas: if obs.members.is_some() {
            voters
        } else {
            obs.statefulset.as_ref().map(|s| s.replicas as i32).unwrap_or(0)
        },
        ready_replicas: obs.pods.values().filter(|p| p.ready).count() as i32,
        selector: Some(naming::selector_string(&name)),
        formed: prev.formed || leader.is_some(),
        // Keep the last known members while none answers, so quorum loss stays detectable.
        members: if obs.members.is_some() { member_status } else { prev.members.clone() },
        leader: leader.map(|l| if l.name.is_empty() { format!("{:x}", l.id) } else { l.name.clone() }),
        // Kept from the first reconcile that saw the loss until quorum is back.
        quorum_lost_since: quorum_lost.then(|| prev.quorum_lost_since.clone().unwrap_or(Time(obs.now))),
        quorum_loss_best_index: quorum_lost.then(|| best_index(&name, obs, prev.quorum_loss_best_index)).flatten(),
        conditions,
        // The newest of: this step (NOSPACE remediation), the CronJobs' Jobs, what was recorded.
        last_compaction: newest(
            &[out.last_compaction.as_ref(), jobs.compaction.as_ref(), prev.last_compaction.as_ref()],
            |r| r.time.0,
        ),
        last_defrag: newest(&[out.last_defrag.as_ref(), jobs.defrag.as_ref(), prev.last_defrag.as_ref()], |r| r.time.0),
        last_backup: newest(&[jobs.backup.as_ref(), prev.last_backup.as_ref()], |r| r.time.0),
        last_backup_failure: newest(&[jobs.backup_failure.as_ref(), prev.last_backup_failure.as_ref()], |r| r.time.0),
        backup_request: match action {
            Action::BackupNow { token } => Some(token.clone()),
            _ => prev.backup_request.clone(),
        },
        // As the members said; the step just taken; or as last seen.
        auth_enabled: match action {
            Action::SetAuth { enable } => Some(*enable),
            _ if kc.spec.auth.is_some() => obs.auth_enabled.or(prev.auth_enabled),
            _ => None,
        },
        // The TLS the members run with; kept as it was while the spec asks
        // for a change a formed cluster cannot make.
        tls: match (&obs.desired.tls_conflict, kc.recorded_tls()) {
            (Some(_), Some(rec)) => Some(rec),
            _ => {
                let (layout, mode) = (kc.tls(), kc.tls_mode());
                let kept = prev.tls.as_ref().filter(|t| t.mode == mode).and_then(|t| t.not_after.clone());
                Some(TlsStatus {
                    mode,
                    client_tls: layout.client_tls(),
                    peer_tls: layout.peer_tls(),
                    not_after: match mode {
                        TlsMode::Operator | TlsMode::CertManager => obs.certs_not_after.map(Time).or(kept),
                        _ => None,
                    },
                })
            }
        },
        // Recorded once, from the check, before the members are created.
        restored_from: prev.restored_from.clone().or_else(|| match (&jobs.restore_check, obs.statefulset.is_none()) {
            (Some(Ok(b)), true) => Some(b.clone()),
            _ => None,
        }),
        // This step's refusal; cleared by an expansion that went through,
        // or once the spec asks for another size.
        volume_expansion_refused: match (action, &out.expansion_refused) {
            (_, Some(r)) => Some(r.clone()),
            (Action::ExpandClaim { .. }, None) => None,
            _ => prev.volume_expansion_refused.filter(|r| r.size == obs.desired.storage_size),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn fresh_cluster_status() {
        let kc = kvcluster("demo", 3);
        let obs = Observation::default();
        let st = build(&kc, &obs, &Action::Bootstrap { replicas: 3 }, &Outcome::default());
        assert_eq!(st.phase.as_deref(), Some("Creating"));
        assert_eq!(st.selector.as_deref(), Some("app.kubernetes.io/instance=demo,app.kubernetes.io/name=kvd"));
        let types: Vec<_> = st.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(
            types,
            vec![
                ("Available", "False"),
                ("Progressing", "True"),
                ("Degraded", "False"),
                ("QuotaAlarm", "False"),
                ("Reconfiguring", "False")
            ]
        );
        assert_eq!(
            st.tls,
            Some(TlsStatus { mode: TlsMode::Disabled, client_tls: false, peer_tls: false, not_after: None })
        );
    }

    #[test]
    fn the_tls_mode_is_recorded_and_kept_through_a_refused_change() {
        let kc = crate::fixtures::kvcluster_default_tls("demo", 3);
        let expiry: Timestamp = "2027-03-06T00:00:00Z".parse().expect("ts");
        let obs = Observation { certs_not_after: Some(expiry), ..Observation::default() };
        let st = build(&kc, &obs, &Action::Bootstrap { replicas: 3 }, &Outcome::default());
        let recorded =
            TlsStatus { mode: TlsMode::Operator, client_tls: true, peer_tls: true, not_after: Some(Time(expiry)) };
        assert_eq!(st.tls.as_ref(), Some(&recorded));
        // Formed, then asked for plain text: the record stays as it was.
        let mut kc = kc;
        kc.status = Some(KvClusterStatus { formed: true, ..st });
        kc.spec.tls = Some(crate::crd::TlsSpec { mode: Some(TlsMode::Disabled), ..Default::default() });
        let mut obs = Observation::default();
        obs.desired.tls_conflict = kc.tls_conflict();
        let a = Action::Degraded { reason: "TLSChangeUnsupported", message: String::new() };
        assert_eq!(build(&kc, &obs, &a, &Outcome::default()).tls, Some(recorded));
    }

    #[test]
    fn transition_time_kept_while_unchanged() {
        let mut kc = kvcluster("demo", 3);
        let obs = Observation::default();
        let a = Action::Degraded { reason: "QuorumLost", message: "x".into() };
        let st = build(&kc, &obs, &a, &Outcome::default());
        let mut old = st.clone();
        let t0 = Time("2020-01-01T00:00:00Z".parse().expect("ts"));
        old.conditions.iter_mut().for_each(|c| c.last_transition_time = t0.clone());
        kc.status = Some(old);
        let st2 = build(&kc, &obs, &a, &Outcome::default());
        assert!(st2.conditions.iter().all(|c| c.last_transition_time == t0));
        assert_eq!(st2.phase.as_deref(), Some("Degraded"));
    }

    fn degraded(st: &KvClusterStatus) -> (&str, &str, &str) {
        let c = st.conditions.iter().find(|c| c.type_ == "Degraded").expect("Degraded");
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn quorum_lost_since_is_kept_until_quorum_is_back() {
        let mut kc = kvcluster("demo", 3);
        let t = |s: &str| -> jiff::Timestamp { s.parse().expect("ts") };
        let obs =
            Observation { bootstrapped: true, now: t("2026-01-01T10:00:00Z"), members: None, ..Observation::default() };
        let a = Action::Degraded { reason: "QuorumLost", message: "x".into() };
        let st = build(&kc, &obs, &a, &Outcome::default());
        assert_eq!(st.quorum_lost_since, Some(Time(obs.now)));
        kc.status = Some(st);
        let later = Observation { now: t("2026-01-01T10:05:00Z"), ..obs.clone() };
        let st = build(&kc, &later, &a, &Outcome::default());
        assert_eq!(st.quorum_lost_since, Some(Time(obs.now)), "the first sighting is kept");
        // Quorum back: one member that leads alone.
        kc.status = Some(st);
        let me = crate::observe::MemberObs {
            id: 7,
            health: Some(crate::observe::MemberHealth { leader: 7, ..Default::default() }),
            ..Default::default()
        };
        let healthy = Observation { members: Some(vec![me]), ..later };
        let st = build(&kc, &healthy, &Action::Idle, &Outcome::default());
        assert_eq!((st.quorum_lost_since, st.quorum_loss_best_index), (None, None));
    }

    #[test]
    fn the_best_raft_index_of_a_loss_is_kept() {
        let mut kc = kvcluster("demo", 3);
        let voter = |o: u32, index: Option<u64>| crate::observe::MemberObs {
            id: u64::from(o) + 1,
            name: format!("demo-{o}"),
            ordinal: Some(o),
            health: index.map(|raft_index| crate::observe::MemberHealth { raft_index, ..Default::default() }),
            ..Default::default()
        };
        // Each claim created at its ordinal's second after the epoch.
        let created = |o: u32| jiff::Timestamp::from_second(i64::from(o) + 1).expect("ts");
        let lost = |ms: Vec<crate::observe::MemberObs>| Observation {
            bootstrapped: true,
            members: Some(ms),
            claims_created: (0..3).map(|o| (o, created(o))).collect(),
            ..Observation::default()
        };
        let a = Action::Degraded { reason: "QuorumLost", message: "x".into() };
        let best = |kc: &KvCluster, obs: &Observation| build(kc, obs, &a, &Outcome::default()).quorum_loss_best_index;
        let record = |m: &str, raft_index| {
            let o: u32 = m.trim_start_matches("demo-").parse().expect("ordinal");
            Some(RaftIndexRecord { member: m.into(), raft_index, claim_created: Some(Time(created(o))) })
        };
        let obs = lost(vec![voter(0, Some(10)), voter(1, Some(12)), voter(2, None)]);
        assert_eq!(best(&kc, &obs), record("demo-1", 12));
        // demo-1 stops answering: its record stays, until someone passes it.
        kc.status = Some(build(&kc, &obs, &a, &Outcome::default()));
        assert_eq!(best(&kc, &lost(vec![voter(0, Some(11)), voter(1, None)])), record("demo-1", 12));
        assert_eq!(best(&kc, &lost(vec![voter(0, Some(13)), voter(1, None)])), record("demo-0", 13));
        // A learner does not count.
        let mut learner = voter(2, Some(99));
        learner.is_learner = true;
        assert_eq!(best(&kc, &lost(vec![voter(0, Some(1)), learner])), record("demo-1", 12));
    }

    #[test]
    fn a_recovery_shows_as_degraded_quorum_recovery() {
        let kc = kvcluster("demo", 3);
        let obs = Observation::default();
        let since = "2026-01-01T10:00:00Z".parse().expect("ts");
        let force = Action::ForceNewCluster { ordinal: 2, token: "tok".into(), since };
        let st = build(&kc, &obs, &force, &Outcome::default());
        assert_eq!(st.phase.as_deref(), Some("Recovering"));
        let (status, reason, message) = degraded(&st);
        assert_eq!((status, reason), ("True", "QuorumRecovery"));
        assert!(message.contains("demo-2") && message.contains("tok"), "{message}");
        // While the ConfigMap holds the key, every step is part of it.
        let key = crate::resources::ForceKey { member: "demo-2".into(), token: "tok".into(), since };
        let obs = Observation {
            recovery: Some(crate::recovery::RecoveryObs { ordinal: 2, key, survivor: None, others: vec![] }),
            ..Observation::default()
        };
        let st = build(&kc, &obs, &Action::RecycleMember { ordinal: 0 }, &Outcome::default());
        assert_eq!(
            (st.phase.as_deref(), degraded(&st).0, degraded(&st).1),
            (Some("Recovering"), "True", "QuorumRecovery")
        );
        let split = Action::Degraded { reason: "SplitBrain", message: "two leaders".into() };
        let st = build(&kc, &obs, &split, &Outcome::default());
        assert_eq!((st.phase.as_deref(), degraded(&st).1), (Some("Degraded"), "SplitBrain"));
        // Over: nothing is degraded any more.
        let st = build(&kc, &Observation::default(), &Action::Idle, &Outcome::default());
        assert_eq!(degraded(&st), ("False", "AsExpected", ""));
    }

    #[test]
    fn backups_and_the_checked_restore_are_recorded() {
        use crate::maintenance::JobObs;
        use crate::resources::Task;
        let mut kc = kvcluster("demo", 3);
        let saved = |rev: i64, t: &str| {
            format!(r#"{{"key":"k{rev}","revision":{rev},"size":10,"sha256":"ab","member":"demo-1","time":"{t}"}}"#)
        };
        let job = |task: Task, msg: String| JobObs {
            name: "j".into(),
            task,
            succeeded: true,
            message: Some(msg),
            ..JobObs::default()
        };
        // A good check before the StatefulSet exists: recorded, and kept.
        let obs = Observation {
            jobs: vec![job(Task::RestoreCheck, saved(9, "2026-01-01T10:00:00Z"))],
            ..Observation::default()
        };
        let st =
            build(&kc, &obs, &Action::Wait { reason: "CheckingBackup", message: String::new() }, &Outcome::default());
        assert_eq!(st.restored_from.as_ref().map(|b| b.revision), Some(9));
        kc.status = Some(st);
        let st = build(&kc, &Observation::default(), &Action::Idle, &Outcome::default());
        assert_eq!(st.restored_from.as_ref().map(|b| b.key.as_str()), Some("k9"));
        // The newest successful backup wins over an older recorded one; the token acted on is kept.
        let obs =
            Observation { jobs: vec![job(Task::Backup, saved(50, "2026-01-02T10:00:00Z"))], ..Observation::default() };
        let st = build(&kc, &obs, &Action::BackupNow { token: "t".into() }, &Outcome::default());
        assert_eq!((st.last_backup.as_ref().map(|b| b.revision), st.backup_request.as_deref()), (Some(50), Some("t")));
        kc.status = Some(st);
        let older =
            Observation { jobs: vec![job(Task::Backup, saved(40, "2026-01-01T10:00:00Z"))], ..Observation::default() };
        let st = build(&kc, &older, &Action::Idle, &Outcome::default());
        assert_eq!((st.last_backup.map(|b| b.revision), st.backup_request.as_deref()), (Some(50), Some("t")));
    }
}
