//! Leader election decisions, as a table of Lease states.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::{Decision, decide, next_spec};

fn lease(holder: &str, renewed_secs_ago: i64, duration: i32, transitions: i32, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
        lease_duration_seconds: Some(duration),
        renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
        acquire_time: Some(MicroTime(now - SignedDuration::from_secs(100))),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

#[test]
fn decisions_follow_the_lease() {
    let now = Timestamp::now();
    let cases: Vec<(&str, Option<LeaseSpec>, Decision)> = vec![
        ("no lease", None, Decision::Create),
        ("ours, fresh", Some(lease("me", 1, 15, 3, now)), Decision::Renew),
        ("ours, expired: still ours", Some(lease("me", 60, 15, 3, now)), Decision::Renew),
        ("other, fresh", Some(lease("other", 5, 15, 3, now)), Decision::Wait { holder: "other".into() }),
        ("other, just inside", Some(lease("other", 14, 15, 3, now)), Decision::Wait { holder: "other".into() }),
        ("other, expired", Some(lease("other", 16, 15, 3, now)), Decision::TakeOver { transitions: 4 }),
        ("released (no holder)", Some(lease("", 1, 15, 7, now)), Decision::TakeOver { transitions: 8 }),
        (
            "other, never renewed nor acquired",
            Some(LeaseSpec { holder_identity: Some("other".into()), ..Default::default() }),
            Decision::TakeOver { transitions: 1 },
        ),
    ];
    for (what, spec, want) in cases {
        assert_eq!(decide(spec.as_ref(), "me", now), want, "{what}");
    }
}

#[test]
fn written_specs_hold_the_lease_and_count_transitions() {
    let now = Timestamp::now();
    let d = Duration::from_secs(15);
    let created = next_spec(None, &Decision::Create, "me", d, now);
    assert_eq!(created.holder_identity.as_deref(), Some("me"));
    assert_eq!(created.lease_transitions, Some(0));
    assert_eq!(created.lease_duration_seconds, Some(15));
    assert_eq!(created.renew_time.as_ref().map(|t| t.0), Some(now));

    let old = lease("other", 30, 15, 2, now);
    let taken = next_spec(Some(&old), &Decision::TakeOver { transitions: 3 }, "me", d, now);
    assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    assert_eq!(taken.lease_transitions, Some(3));
    assert_eq!(taken.acquire_time.as_ref().map(|t| t.0), Some(now));

    // A renewal keeps the acquire time and the transitions.
    let mine = lease("me", 2, 15, 5, now);
    let renewed = next_spec(Some(&mine), &Decision::Renew, "me", d, now);
    assert_eq!(renewed.lease_transitions, Some(5));
    assert_eq!(renewed.acquire_time, mine.acquire_time);
    assert_eq!(renewed.renew_time.as_ref().map(|t| t.0), Some(now));
    // The candidate that renews is never told to wait for itself.
    assert_eq!(decide(Some(&renewed), "me", now), Decision::Renew);
    assert_eq!(decide(Some(&renewed), "other", now), Decision::Wait { holder: "me".into() });
}
