//! Volume expansion, planned (pure). When `spec.storage.size` grows, each
//! member's claim is asked for the new size, one claim per step; the
//! storage driver grows the volume (and kubelet the file system, online)
//! while the member keeps running. The StatefulSet's claim template keeps
//! the size it was created with (claim templates cannot change), so a
//! member added later starts at that size and is expanded in turn.
//!
//! It is the planner's last step, taken only when the cluster is otherwise
//! settled. A claim the API server refuses to expand (its StorageClass has
//! no `allowVolumeExpansion`, or it was not dynamically provisioned) is
//! recorded in `status.volumeExpansionRefused`; the cluster is then
//! Degraded `VolumeExpansionRefused` and tries again after
//! `RETRY_REFUSED_AFTER`, or at once when the size asked for changes.

use std::time::Duration;

use crate::observe::Observation;
use crate::planner::Action;

/// How long a refused expansion is left alone before it is tried again.
pub const RETRY_REFUSED_AFTER: Duration = Duration::from_secs(300);

/// The expansion step for the member ordinals `members`, if one is due.
pub fn step(obs: &Observation, members: &[u32]) -> Option<Action> {
    let d = &obs.desired;
    let want = d.storage_bytes?;
    if let Some(r) = obs.expansion_refused.as_ref().filter(|r| r.size == d.storage_size) {
        let age = obs.now.duration_since(r.time.0).as_secs().max(0) as u64;
        if age < RETRY_REFUSED_AFTER.as_secs() {
            return Some(Action::Degraded {
                reason: "VolumeExpansionRefused",
                message: format!("claim {} cannot grow to {}: {}", r.claim, d.storage_size, r.message),
            });
        }
    }
    let claim = |o: &u32| obs.claim_sizes.get(o);
    if let Some(o) = members.iter().find(|o| claim(o).and_then(|c| c.requested).is_some_and(|r| r < want)) {
        return Some(Action::ExpandClaim { ordinal: *o });
    }
    let growing: Vec<u32> =
        members.iter().copied().filter(|o| claim(o).and_then(|c| c.capacity).is_some_and(|c| c < want)).collect();
    if !growing.is_empty() {
        return Some(Action::Wait {
            reason: "VolumesExpanding",
            message: format!("the claims of members {growing:?} are growing to {}", d.storage_size),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ExpansionRefusal;
    use crate::observe::ClaimObs;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const GI: u64 = 1 << 30;

    fn obs(size: &str, claims: &[(u32, u64, u64)]) -> Observation {
        let mut o = Observation::default();
        o.desired.storage_size = size.into();
        o.desired.storage_bytes = crate::quantity::bytes(size);
        o.now = jiff::Timestamp::from_second(10_000).unwrap();
        o.claim_sizes = claims
            .iter()
            .map(|(ord, req, cap)| (*ord, ClaimObs { requested: Some(*req), capacity: Some(*cap) }))
            .collect();
        o
    }

    #[test]
    fn claims_at_the_size_need_nothing() {
        assert_eq!(step(&obs("1Gi", &[(0, GI, GI), (1, GI, GI)]), &[0, 1]), None);
        // Bigger than asked (a shrink the CRD refuses, or a class rounding up): nothing either.
        assert_eq!(step(&obs("1Gi", &[(0, 2 * GI, 2 * GI)]), &[0]), None);
    }

    #[test]
    fn a_grown_size_expands_one_member_claim_at_a_time() {
        let o = obs("2Gi", &[(0, 2 * GI, GI), (1, GI, GI), (2, GI, GI), (5, GI, GI)]);
        assert_eq!(step(&o, &[0, 1, 2]), Some(Action::ExpandClaim { ordinal: 1 }));
        // A retained claim of no member is left alone.
        let o = obs("2Gi", &[(0, 2 * GI, GI), (5, GI, GI)]);
        assert!(matches!(step(&o, &[0]), Some(Action::Wait { reason: "VolumesExpanding", .. })));
    }

    #[test]
    fn asked_claims_are_waited_for_until_they_have_grown() {
        let o = obs("2Gi", &[(0, 2 * GI, 2 * GI), (1, 2 * GI, GI)]);
        let Some(Action::Wait { message, .. }) = step(&o, &[0, 1]) else { panic!("no wait") };
        assert!(message.contains("[1]"), "{message}");
        assert_eq!(step(&obs("2Gi", &[(0, 2 * GI, 2 * GI)]), &[0]), None);
    }

    #[test]
    fn a_refusal_degrades_until_retried_or_the_size_changes() {
        let mut o = obs("2Gi", &[(0, GI, GI)]);
        let refused_at = |secs| ExpansionRefusal {
            size: "2Gi".into(),
            claim: "data-demo-0".into(),
            message: "forbidden".into(),
            time: Time(jiff::Timestamp::from_second(secs).unwrap()),
        };
        o.expansion_refused = Some(refused_at(10_000 - 60));
        let Some(Action::Degraded { reason, message }) = step(&o, &[0]) else { panic!("not degraded") };
        assert_eq!(reason, "VolumeExpansionRefused");
        assert!(message.contains("data-demo-0") && message.contains("forbidden"), "{message}");
        o.expansion_refused = Some(refused_at(10_000 - RETRY_REFUSED_AFTER.as_secs() as i64));
        assert_eq!(step(&o, &[0]), Some(Action::ExpandClaim { ordinal: 0 }));
        o.expansion_refused = Some(refused_at(10_000 - 60));
        o.desired.storage_size = "3Gi".into();
        o.desired.storage_bytes = Some(3 * GI);
        assert_eq!(step(&o, &[0]), Some(Action::ExpandClaim { ordinal: 0 }));
    }

    #[test]
    fn a_size_that_is_no_quantity_expands_nothing() {
        assert_eq!(step(&obs("lots", &[(0, GI, GI)]), &[0]), None);
    }
}
