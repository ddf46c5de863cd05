//! Which backups a retention policy removes: those past the newest
//! `keep_last`, and those older than `max_age`. The newest backup is never
//! removed, whatever the policy, so a destination that had a backup keeps one.

use std::time::Duration;

/// A backup found in the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The object's key.
    pub key: String,
    /// When it was taken (seconds since the epoch, from its name).
    pub at: u64,
    pub revision: i64,
    /// Bytes stored.
    pub size: u64,
}

/// Orders backups oldest first: by time, then revision (two in the same
/// second), then key.
pub fn chronological(a: &Stored, b: &Stored) -> std::cmp::Ordering {
    (a.at, a.revision, &a.key).cmp(&(b.at, b.revision, &b.key))
}

/// The backups to remove from `stored` at time `now`.
pub fn to_prune(stored: &[Stored], keep_last: Option<usize>, max_age: Option<Duration>, now: u64) -> Vec<Stored> {
    let mut newest_first: Vec<&Stored> = stored.iter().collect();
    newest_first.sort_by(|a, b| chronological(b, a));
    newest_first
        .into_iter()
        .enumerate()
        .skip(1)
        .filter(|(i, s)| {
            keep_last.is_some_and(|n| *i >= n) || max_age.is_some_and(|a| now.saturating_sub(s.at) > a.as_secs())
        })
        .map(|(_, s)| s.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(t: u64) -> Stored {
        Stored { key: format!("k{t:05}"), at: t, revision: t as i64, size: 1 }
    }

    #[test]
    fn count_and_age() {
        let all: Vec<Stored> = [10, 20, 30, 40, 50].map(at).to_vec();
        let keys = |v: Vec<Stored>| v.into_iter().map(|s| s.at).collect::<Vec<_>>();
        assert_eq!(keys(to_prune(&all, Some(2), None, 50)), vec![30, 20, 10]);
        assert_eq!(keys(to_prune(&all, None, Some(Duration::from_secs(15)), 50)), vec![30, 20, 10]);
        assert_eq!(keys(to_prune(&all, Some(4), Some(Duration::from_secs(25)), 50)), vec![20, 10]);
        assert!(to_prune(&all, None, None, 50).is_empty());
        // The newest stays even when everything is too old or the count is 0.
        assert_eq!(keys(to_prune(&all, Some(0), Some(Duration::from_secs(1)), 1000)), vec![40, 30, 20, 10]);
    }

    proptest! {
        /// What is kept is exactly: the newest, plus those within both limits.
        #[test]
        fn kept_is_newest_and_within_limits(times in proptest::collection::btree_set(0u64..1000, 0..30),
                                            keep in proptest::option::of(0usize..10),
                                            age in proptest::option::of(0u64..1000), now in 1000u64..2000) {
            let all: Vec<Stored> = times.iter().copied().map(at).collect();
            let pruned = to_prune(&all, keep, age.map(Duration::from_secs), now);
            let mut newest_first: Vec<u64> = times.iter().copied().collect();
            newest_first.reverse();
            for (i, t) in newest_first.iter().enumerate() {
                let within = keep.is_none_or(|n| i < n) && age.is_none_or(|a| now - t <= a);
                let kept = !pruned.iter().any(|s| s.at == *t);
                prop_assert_eq!(kept, i == 0 || within, "i={} t={}", i, t);
            }
        }
    }
}
