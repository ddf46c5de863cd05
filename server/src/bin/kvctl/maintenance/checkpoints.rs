//! Duration retention for `kvctl compact --retain-duration`.
//!
//! etcd has no "revision at time T" call, and `kvctl compact` runs as a
//! short-lived Job pod that remembers nothing between runs. So the cluster
//! remembers for it: every run reads the current revision R at time T and
//! keeps `(T, R)` as a checkpoint in one reserved key (`CHECKPOINT_KEY`),
//! updated with a compare-and-swap on its mod revision. A later run compacts
//! to the newest checkpoint that is at least the retention old. That is
//! sound: R was current at T, so every revision written after T is above R
//! and survives a compaction at R; at least the retention of history is
//! always kept (at most one schedule interval more).
//!
//! Why in the cluster: the state survives the pod, any number of kvctl runs
//! (a CronJob, a human, two overlapping runs) share it safely through the
//! CAS, it needs nothing from the operator, and it travels with the data (a
//! snapshot restore brings back checkpoints that match its revisions). The
//! cost is one visible key and one revision per run. A checkpoint is added
//! at most every retention/64 and only when the revision moved, so the key
//! stays small (about 64 entries) whatever the schedule. The first run (no
//! checkpoint old enough) compacts nothing; lost or garbled checkpoints only
//! ever mean keeping more history, never less.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The reserved key holding the checkpoints (JSON).
pub const CHECKPOINT_KEY: &str = "kvd.io/kvctl/compaction-checkpoints";
/// Checkpoints kept per retention window, at most (plus one).
pub const SAMPLES_PER_RETENTION: u64 = 64;

/// At `time_ms` (Unix milliseconds), `revision` was the cluster's current revision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub time_ms: u64,
    pub revision: i64,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    checkpoints: Vec<Checkpoint>,
}

/// The checkpoints stored in `value` (an absent key is an empty value).
pub fn decode(value: &[u8]) -> Result<Vec<Checkpoint>, serde_json::Error> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice::<Stored>(value).map(|s| s.checkpoints)
}

/// The stored form of `checkpoints`.
pub fn encode(checkpoints: &[Checkpoint]) -> Vec<u8> {
    serde_json::to_vec(&Stored { checkpoints: checkpoints.to_vec() }).unwrap_or_default()
}

/// What one run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Compact here (None: no checkpoint is old enough yet).
    pub target: Option<i64>,
    /// The checkpoints to store afterwards.
    pub keep: Vec<Checkpoint>,
}

/// The run at `now_ms`, with `current` the cluster's revision, keeping `retention`.
pub fn plan(checkpoints: &[Checkpoint], now_ms: u64, current: i64, retention: Duration) -> Plan {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms.saturating_sub(retention_ms);
    let target = checkpoints.iter().filter(|c| c.time_ms <= cutoff).map(|c| c.revision).max();
    // Older checkpoints are compacted away (or about to be): drop them.
    let mut keep: Vec<Checkpoint> = checkpoints.iter().filter(|c| c.time_ms > cutoff).copied().collect();
    keep.sort_by_key(|c| (c.time_ms, c.revision));
    let spacing = (retention_ms / SAMPLES_PER_RETENTION).max(1);
    let add = match keep.last() {
        None => true,
        Some(last) => current > last.revision && now_ms >= last.time_ms.saturating_add(spacing),
    };
    if add {
        keep.push(Checkpoint { time_ms: now_ms, revision: current });
    }
    Plan { target, keep }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn cp(time_ms: u64, revision: i64) -> Checkpoint {
        Checkpoint { time_ms, revision }
    }

    #[test]
    fn compacts_to_the_newest_checkpoint_old_enough() {
        let hour = Duration::from_secs(3600);
        // First run: nothing to compact, remember where we are.
        assert_eq!(plan(&[], 10 * H, 100, hour), Plan { target: None, keep: vec![cp(10 * H, 100)] });
        // Half an hour later: still too young.
        let p = plan(&[cp(10 * H, 100)], 10 * H + H / 2, 150, hour);
        assert_eq!(p.target, None);
        assert_eq!(p.keep, vec![cp(10 * H, 100), cp(10 * H + H / 2, 150)]);
        // Two hours later: the 10h one is old enough; the 10h30 one (1.5h old) too, and is newer.
        let p = plan(&p.keep, 12 * H, 300, hour);
        assert_eq!(p.target, Some(150));
        assert_eq!(p.keep, vec![cp(12 * H, 300)]);
    }

    #[test]
    fn checkpoints_stay_few() {
        let hour = Duration::from_secs(3600);
        let mut cps = Vec::new();
        // A run every second for two hours, the revision moving each time.
        for s in 0..7200u64 {
            cps = plan(&cps, s * 1000, s as i64 + 1, hour).keep;
        }
        assert!(cps.len() <= SAMPLES_PER_RETENTION as usize + 1, "{}", cps.len());
        // An unchanged revision adds nothing.
        let last = *cps.last().expect("some");
        let p = plan(&cps, last.time_ms + H / 2, last.revision, hour);
        assert_eq!(p.keep.last(), Some(&last));
    }

    #[test]
    fn garbage_is_an_error_and_empty_is_none() {
        assert_eq!(decode(b"").expect("empty"), vec![]);
        assert!(decode(b"{not json").is_err());
        let cps = vec![cp(1, 2), cp(3, 4)];
        assert_eq!(decode(&encode(&cps)).expect("round trip"), cps);
    }
}
