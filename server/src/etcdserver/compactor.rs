//! Auto-compaction, as etcd's `v3compactor`: with `--auto-compaction-mode
//! periodic` the leader keeps the history of the last retention period
//! (sampling the revision every tenth of it, at most every 6 minutes, and
//! compacting to the newest sample that is a whole period old); with
//! `revision` it keeps the last N revisions, checking every 5 minutes. Only
//! the leader proposes compactions; a member that loses leadership forgets
//! its samples.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvd_api::etcdserverpb::{CompactionRequest, InternalRaftRequest};
use openraft::async_runtime::WatchReceiver;

use super::{EtcdServer, ServerError};
use crate::apply::ApplyError;
use crate::mvcc::MvccError;

/// How often revision mode checks (etcd's revInterval).
const REVISION_CHECK: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl AutoCompaction {
    /// Parses `--auto-compaction-mode` and `--auto-compaction-retention` as
    /// etcd does: in periodic mode a bare number is hours, otherwise a
    /// duration ("30m", "1h30m"); in revision mode a number of revisions.
    /// A zero retention turns auto-compaction off.
    pub fn parse(mode: &str, retention: &str) -> Result<Self, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let d = match retention.parse::<f64>() {
                    Ok(h) if h >= 0.0 && h.is_finite() => Duration::from_secs_f64(h * 3600.0),
                    Ok(_) => return Err(format!("retention {retention:?} must not be negative")),
                    Err(_) => humantime::parse_duration(retention)
                        .map_err(|e| format!("retention {retention:?} is neither hours nor a duration: {e}"))?,
                };
                Ok(if d.is_zero() { Self::Off } else { Self::Periodic(d) })
            }
            "revision" => match retention.parse::<i64>() {
                Ok(0) => Ok(Self::Off),
                Ok(n) if n > 0 => Ok(Self::Revision(n)),
                _ => Err(format!("retention {retention:?} is not a positive number of revisions")),
            },
            other => Err(format!("unknown mode {other:?}: periodic or revision")),
        }
    }

    /// Time between two checks.
    fn step(self) -> Duration {
        match self {
            Self::Off => Duration::MAX,
            Self::Periodic(r) => (r.min(Duration::from_secs(3600)) / 10).max(Duration::from_millis(10)),
            Self::Revision(_) => REVISION_CHECK,
        }
    }
}

/// Periodic mode's memory: revisions sampled over time.
#[derive(Debug, Default)]
pub struct PeriodicPlan {
    samples: VecDeque<(Instant, i64)>,
}

impl PeriodicPlan {
    /// Records `rev` at `now`; returns the revision to compact to, if a
    /// sample is now at least `retention` old (the newest such one).
    pub fn sample(&mut self, now: Instant, rev: i64, retention: Duration) -> Option<i64> {
        self.samples.push_back((now, rev));
        let mut target = None;
        while let Some(&(t, r)) = self.samples.front() {
            if now.duration_since(t) < retention {
                break;
            }
            target = Some(r);
            self.samples.pop_front();
        }
        target
    }
}

/// Revision mode: compact to `current - keep` once that moved forward.
pub fn revision_target(current: i64, keep: i64, compacted: i64) -> Option<i64> {
    let t = current - keep;
    (t > 0 && t > compacted).then_some(t)
}

impl EtcdServer {
    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.member_id)
    }

    /// Starts the auto-compaction loop (nothing when it is off).
    pub fn run_auto_compaction(self: &Arc<Self>) {
        let mode = self.cfg.auto_compaction;
        if mode == AutoCompaction::Off {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            let mut plan = PeriodicPlan::default();
            let mut tick = tokio::time::interval(mode.step());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !s.is_leader() {
                    plan = PeriodicPlan::default();
                    continue;
                }
                let (rev, compacted) = (s.store.rev(), s.store.compact_rev());
                let target = match mode {
                    AutoCompaction::Off => None,
                    AutoCompaction::Periodic(r) => plan.sample(Instant::now(), rev, r),
                    AutoCompaction::Revision(keep) => revision_target(rev, keep, compacted),
                };
                let Some(target) = target.filter(|t| *t > compacted) else { continue };
                let req = CompactionRequest { revision: target, physical: false };
                match s.propose(InternalRaftRequest { compaction: Some(req), ..Default::default() }).await {
                    Ok(_) => tracing::info!(revision = target, mode = ?mode, "auto-compaction"),
                    Err(ServerError::Apply(ApplyError::Mvcc(MvccError::Compacted))) => {}
                    Err(e) => tracing::warn!(revision = target, error = %e, "auto-compaction failed; will retry"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_retention_forms() {
        let p = AutoCompaction::parse;
        assert_eq!(p("periodic", "1"), Ok(AutoCompaction::Periodic(Duration::from_secs(3600))));
        assert_eq!(p("periodic", "30m"), Ok(AutoCompaction::Periodic(Duration::from_secs(1800))));
        assert_eq!(p("periodic", "1h30m"), Ok(AutoCompaction::Periodic(Duration::from_secs(5400))));
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert!(p("revision", "1h").is_err());
        assert!(p("periodic", "-1").is_err());
        assert!(p("weekly", "1").is_err());
    }

    #[test]
    fn periodic_compacts_to_the_newest_sample_a_period_old() {
        let mut plan = PeriodicPlan::default();
        let t0 = Instant::now();
        let r = Duration::from_secs(10);
        for i in 0..10 {
            assert_eq!(plan.sample(t0 + Duration::from_secs(i), 100 + i as i64, r), None);
        }
        assert_eq!(plan.sample(t0 + Duration::from_secs(10), 200, r), Some(100));
        assert_eq!(plan.sample(t0 + Duration::from_secs(12), 300, r), Some(102));
        assert_eq!(plan.sample(t0 + Duration::from_secs(12), 300, r), None);
    }

    #[test]
    fn revision_mode_keeps_the_last_n() {
        assert_eq!(revision_target(100, 10, 0), Some(90));
        assert_eq!(revision_target(100, 10, 90), None);
        assert_eq!(revision_target(5, 10, 0), None);
    }
}
