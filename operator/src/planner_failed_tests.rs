//! Table tests for failed members, through `planner::plan`: a voter whose
//! pod keeps failing is removed and added back with a fresh volume, never
//! below quorum and one at a time; a learner that never started gets a
//! fresh volume, one that started is removed; a pod being deleted is not
//! counted as failing.

use std::time::Duration;

use super::tests::{cluster, fail, id, members, run, simulate};
use super::*;
use crate::FAILED_MEMBER_AFTER;

#[test]
fn failed_member_is_replaced_with_a_fresh_volume() {
    let mut obs = cluster(3);
    fail(&mut obs, 1, Duration::from_secs(30));
    assert!(matches!(plan(&obs), Action::Wait { .. }), "too early to replace");
    fail(&mut obs, 1, FAILED_MEMBER_AFTER);
    assert_eq!(run(&mut obs), replaced(1));
}

#[test]
fn failed_member_timeout_comes_from_the_spec() {
    let mut obs = cluster(3);
    fail(&mut obs, 1, Duration::from_secs(60));
    assert!(matches!(plan(&obs), Action::Wait { .. }), "the default is five minutes");
    obs.desired.failed_member_after = Duration::from_secs(45);
    assert_eq!(plan(&obs), Action::RemoveMember { id: id(1), ordinal: Some(1), reason: RemoveReason::Failed });
    obs.desired.failed_member_after = Duration::from_secs(61);
    assert!(matches!(plan(&obs), Action::Wait { .. }), "not yet at 61 s");
}

#[test]
fn failed_members_replaced_one_at_a_time() {
    let mut obs = cluster(5);
    fail(&mut obs, 3, FAILED_MEMBER_AFTER * 2);
    fail(&mut obs, 4, FAILED_MEMBER_AFTER * 2);
    assert_eq!(plan(&obs), Action::RemoveMember { id: id(3), ordinal: Some(3), reason: RemoveReason::Failed });
    let a = plan(&obs);
    simulate(&mut obs, &a);
    // Four voters (three healthy) while five are wanted: add back before removing more.
    assert_eq!(plan(&obs), Action::AddLearner { ordinal: 3 });
}

#[test]
fn failed_member_never_breaks_quorum() {
    // Two voters, one failed: removing it would leave 1 of quorum(1)=1, fine;
    // but with allowEvenReplicas=4 and two failed, quorum is lost before any removal.
    let mut obs = cluster(4);
    obs.desired.allow_even = true;
    fail(&mut obs, 2, FAILED_MEMBER_AFTER);
    fail(&mut obs, 3, FAILED_MEMBER_AFTER);
    assert!(matches!(plan(&obs), Action::Degraded { reason: "QuorumLost", .. }));
}

#[test]
fn a_failed_learner_that_never_started_gets_a_fresh_volume() {
    let mut obs = cluster(3);
    fail(&mut obs, 2, FAILED_MEMBER_AFTER);
    let m = &mut members(&mut obs)[2];
    (m.is_learner, m.name) = (true, String::new());
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 2 });
}

/// With a fresh volume a started learner could never rejoin under its id
/// (kvd refuses: "has already started, and this data dir is empty"): it is
/// removed, then added back as a new learner, whose pod gets the fresh volume.
#[test]
fn a_failed_learner_that_started_is_removed_then_added_back() {
    let mut obs = cluster(3);
    fail(&mut obs, 2, FAILED_MEMBER_AFTER);
    members(&mut obs)[2].is_learner = true;
    assert_eq!(run(&mut obs), replaced(2));
}

/// An observation can hold the pod a step just deleted (a reconcile that
/// listed pods before the deletion finished): it is not failing, only going.
#[test]
fn a_pod_being_deleted_is_not_a_failure() {
    let mut obs = cluster(3);
    fail(&mut obs, 2, FAILED_MEMBER_AFTER * 2);
    members(&mut obs)[2].name.clear();
    members(&mut obs)[2].is_learner = true;
    obs.pods.get_mut(&2).expect("pod").terminating = true;
    assert!(matches!(plan(&obs), Action::Wait { .. }), "{:?}", plan(&obs));
    obs.pods.get_mut(&2).expect("pod").terminating = false;
    assert_eq!(plan(&obs), Action::RecycleMember { ordinal: 2 });
    let a = plan(&obs);
    simulate(&mut obs, &a);
    assert_eq!(plan(&obs), Action::PromoteLearner { id: id(2), ordinal: 2 });
}

/// The steps that replace the member at ordinal `o`: removed, added back as
/// a learner, its pod given a fresh volume, promoted once caught up.
fn replaced(o: u32) -> Vec<Action> {
    vec![
        Action::RemoveMember { id: id(o), ordinal: Some(o), reason: RemoveReason::Failed },
        Action::AddLearner { ordinal: o },
        Action::RecycleMember { ordinal: o },
        Action::PromoteLearner { id: id(o), ordinal: o },
    ]
}
