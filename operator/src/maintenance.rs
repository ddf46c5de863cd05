//! Scheduled compaction and defragmentation run as CronJobs of `kvctl`
//! (`resources::cronjob`); this module holds the pure parts the controller
//! needs around them: what `observe` keeps of the CronJobs, their finished
//! Jobs and those Jobs' pods (`observe`), which CronJob the planner creates,
//! updates or deletes (`cronjob_step`), and what the newest successful
//! Jobs' termination messages (kvctl's JSON result line) put into
//! `status.lastCompaction`, `status.lastDefrag` and `status.lastBackup`,
//! what the newest failed backup Job said (`status.lastBackupFailure`),
//! and how the check of a backup to restore from ended (`records`). A
//! message that does not parse is ignored.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Deserialize;

use crate::crd::{BackupFailure, BackupRecord, CompactionRecord, DefragRecord};
use crate::observe::Observation;
use crate::planner::Action;
use crate::resources::{SPEC_HASH, Task};

/// One finished (or running) maintenance Job.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JobObs {
    pub name: String,
    pub task: Task,
    pub succeeded: bool,
    /// It gave up (its Failed condition).
    pub failed: bool,
    pub completed: Option<Timestamp>,
    /// The termination message of its kvctl container, when it succeeded.
    pub message: Option<String>,
    /// When it failed: the last failed container's termination message (the
    /// end of its log: kvctl's error) and when that container ended.
    pub failure: Option<(String, Option<Timestamp>)>,
}

/// The CronJobs that exist (with their spec hash) and the Jobs they left.
pub fn observe(cronjobs: &[CronJob], jobs: &[Job], pods: &[Pod]) -> (BTreeMap<Task, Option<String>>, Vec<JobObs>) {
    let task_of =
        |labels: &BTreeMap<String, String>| labels.get("app.kubernetes.io/component").and_then(|c| Task::parse(c));
    let crons =
        cronjobs.iter().filter_map(|c| Some((task_of(c.labels())?, c.annotations().get(SPEC_HASH).cloned()))).collect();
    let jobs = jobs
        .iter()
        .filter_map(|j| {
            let task = task_of(j.labels())?;
            let st = j.status.as_ref();
            let uid = j.uid();
            let terminated: Vec<_> = pods
                .iter()
                .filter(|p| p.owner_references().iter().any(|o| o.kind == "Job" && Some(&o.uid) == uid.as_ref()))
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
                .collect();
            let message = terminated.iter().filter(|t| t.exit_code == 0).find_map(|t| t.message.clone());
            let failed = st
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"));
            let failure = terminated
                .iter()
                .filter(|t| t.exit_code != 0)
                .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))
                .map(|t| (t.message.clone().unwrap_or_default(), t.finished_at.as_ref().map(|f| f.0)))
                .filter(|_| failed);
            Some(JobObs {
                name: j.name_any(),
                task,
                succeeded: st.and_then(|s| s.succeeded).unwrap_or(0) > 0,
                failed,
                completed: st.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
                message,
                failure,
            })
        })
        .collect();
    (crons, jobs)
}

/// Create, update or delete one CronJob so that they match the spec.
pub fn cronjob_step(obs: &Observation) -> Option<Action> {
    for task in Task::SCHEDULED {
        match (obs.desired.cronjobs.get(&task), obs.cronjobs.get(&task)) {
            (Some(want), Some(Some(have))) if want == have => {}
            (Some(_), _) => return Some(Action::EnsureCronJob { task }),
            (None, Some(_)) => return Some(Action::DeleteCronJob { task }),
            (None, None) => {}
        }
    }
    None
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompactResult {
    compacted_revision: Option<i64>,
    time: Timestamp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefragMember {
    name: String,
    bytes_freed: i64,
}

#[derive(Deserialize)]
struct DefragResult {
    members: Vec<DefragMember>,
    time: Timestamp,
}

/// `kvctl compact`'s result line, if it compacted something.
pub fn parse_compaction(message: &str) -> Option<CompactionRecord> {
    let r: CompactResult = serde_json::from_str(message.trim()).ok()?;
    Some(CompactionRecord { revision: r.compacted_revision?, time: Time(r.time) })
}

/// `kvctl defrag`'s result line: the members defragmented (comma-separated,
/// in order; empty when all were under the threshold) and the bytes freed in all.
pub fn parse_defrag(message: &str) -> Option<DefragRecord> {
    let r: DefragResult = serde_json::from_str(message.trim()).ok()?;
    let member = r.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(",");
    let bytes_freed = r.members.iter().map(|m| m.bytes_freed.max(0)).fold(0i64, i64::saturating_add);
    Some(DefragRecord { member, time: Time(r.time), bytes_freed })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupResult {
    key: String,
    revision: Option<i64>,
    size: i64,
    sha256: String,
    #[serde(default)]
    member: String,
    time: Timestamp,
}

/// `kvctl backup save`'s (or `verify`'s) result line.
pub fn parse_backup(message: &str) -> Option<BackupRecord> {
    let r: BackupResult = serde_json::from_str(message.trim()).ok()?;
    Some(BackupRecord {
        key: r.key,
        revision: r.revision.unwrap_or(0),
        size: r.size,
        sha256: r.sha256,
        member: r.member,
        time: Time(r.time),
    })
}

/// What the finished Jobs report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Records {
    pub compaction: Option<CompactionRecord>,
    pub defrag: Option<DefragRecord>,
    pub backup: Option<BackupRecord>,
    pub backup_failure: Option<BackupFailure>,
    /// The restore check: the backup checked, or why it is not usable.
    pub restore_check: Option<Result<BackupRecord, String>>,
}

/// The newest failed Job of `task`, as a record.
fn newest_failure(jobs: &[JobObs], task: Task) -> Option<BackupFailure> {
    jobs.iter()
        .filter(|j| j.task == task)
        .filter_map(|j| {
            let (message, at) = j.failure.clone()?;
            Some(BackupFailure { job: j.name.clone(), time: Time(at?), message: message.trim().to_string() })
        })
        .max_by_key(|f| f.time.0)
}

/// The newest parsable result of a successful Job, per task.
pub fn records(jobs: &[JobObs]) -> Records {
    let newest = |task: Task| {
        let mut ok: Vec<&JobObs> = jobs.iter().filter(|j| j.task == task && j.succeeded).collect();
        ok.sort_by_key(|j| std::cmp::Reverse(j.completed));
        ok.into_iter().filter_map(|j| j.message.as_deref())
    };
    let check = jobs.iter().find(|j| j.task == Task::RestoreCheck);
    Records {
        compaction: newest(Task::Compact).find_map(parse_compaction),
        defrag: newest(Task::Defrag).find_map(parse_defrag),
        backup: newest(Task::Backup).find_map(parse_backup),
        backup_failure: newest_failure(jobs, Task::Backup),
        restore_check: check.and_then(|j| {
            if j.succeeded {
                let m = j.message.as_deref().unwrap_or_default();
                return Some(parse_backup(m).ok_or_else(|| format!("job {}: unreadable result {m:?}", j.name)));
            }
            let (why, _) = j.failure.clone()?;
            Some(Err(format!("job {}: {}", j.name, why.trim())))
        }),
    }
}

/// The time between two runs of a five-field cron `schedule` (UTC), after
/// `now`: what "two schedule periods without a backup" is measured in.
/// None for a schedule that does not parse.
pub fn schedule_period(schedule: &str, now: Timestamp) -> Option<std::time::Duration> {
    let cron: croner::Cron = schedule.parse().ok()?;
    let now = now.to_zoned(jiff::tz::TimeZone::UTC);
    let first = cron.find_next_occurrence(&now, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    std::time::Duration::try_from(second.duration_since(&first)).ok()
}

/// The newest of the given records by time.
pub fn newest<T: Clone>(candidates: &[Option<&T>], time: impl Fn(&T) -> Timestamp) -> Option<T> {
    candidates.iter().flatten().max_by_key(|r| time(r)).map(|r| (*r).clone())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job(task: Task, succeeded: bool, completed: &str, message: &str) -> JobObs {
        JobObs {
            task,
            succeeded,
            completed: completed.parse().ok(),
            message: Some(message.into()),
            ..JobObs::default()
        }
    }

    #[test]
    fn records_come_from_the_newest_successful_parsable_job() {
        let compact = |rev: &str, t: &str| format!(r#"{{"compactedRevision":{rev},"time":"{t}"}}"#);
        let cases: Vec<(Vec<JobObs>, Option<i64>)> = vec![
            (vec![], None),
            (vec![job(Task::Compact, true, "2026-01-01T10:00:00Z", &compact("40", "2026-01-01T09:59:00Z"))], Some(40)),
            // The newer one wins; a failed one never counts.
            (
                vec![
                    job(Task::Compact, true, "2026-01-01T10:00:00Z", &compact("40", "2026-01-01T09:59:00Z")),
                    job(Task::Compact, true, "2026-01-01T11:00:00Z", &compact("90", "2026-01-01T10:59:00Z")),
                    job(Task::Compact, false, "2026-01-01T12:00:00Z", &compact("99", "2026-01-01T11:59:00Z")),
                ],
                Some(90),
            ),
            // Garbage, or nothing compacted, falls back to the older result.
            (
                vec![
                    job(Task::Compact, true, "2026-01-01T10:00:00Z", &compact("40", "2026-01-01T09:59:00Z")),
                    job(Task::Compact, true, "2026-01-01T11:00:00Z", "panic: {not json"),
                    job(Task::Compact, true, "2026-01-01T12:00:00Z", &compact("null", "2026-01-01T11:59:00Z")),
                ],
                Some(40),
            ),
            // A defrag result is not a compaction.
            (vec![job(Task::Defrag, true, "2026-01-01T10:00:00Z", &compact("40", "2026-01-01T09:59:00Z"))], None),
        ];
        for (i, (jobs, want)) in cases.into_iter().enumerate() {
            assert_eq!(records(&jobs).compaction.map(|r| r.revision), want, "case {i}");
        }
    }

    #[test]
    fn schedule_periods() {
        let now: Timestamp = "2026-01-01T10:17:00Z".parse().expect("ts");
        let p = |s: &str| schedule_period(s, now).map(|d| d.as_secs());
        assert_eq!(p("*/5 * * * *"), Some(300));
        assert_eq!(p("0 */6 * * *"), Some(6 * 3600));
        assert_eq!(p("30 2 * * *"), Some(86_400));
        assert_eq!(p("0 0 * * 0"), Some(7 * 86_400));
        assert_eq!(p("not a schedule"), None);
    }

    #[test]
    fn backup_results_and_failures() {
        let saved = json!({ "task": "backup", "result": "saved", "key": "kvd/ns/demo/20260101T100000Z-r42.snap.zst",
            "member": "demo-1", "revision": 42, "size": 4096, "storedSize": 900, "sha256": "ab",
            "time": "2026-01-01T10:00:00Z" });
        let ok = JobObs {
            name: "demo-backup-1".into(),
            task: Task::Backup,
            succeeded: true,
            completed: "2026-01-01T10:00:05Z".parse().ok(),
            message: Some(saved.to_string()),
            ..JobObs::default()
        };
        let failed = JobObs {
            name: "demo-backup-2".into(),
            task: Task::Backup,
            failed: true,
            failure: Some((
                "kvctl: object store: 403 SignatureDoesNotMatch\n".into(),
                "2026-01-01T11:00:00Z".parse().ok(),
            )),
            ..JobObs::default()
        };
        let r = records(&[ok.clone(), failed.clone()]);
        let b = r.backup.expect("backup");
        assert_eq!((b.revision, b.size, b.member.as_str()), (42, 4096, "demo-1"));
        let f = r.backup_failure.expect("failure");
        assert_eq!(
            (f.job.as_str(), f.message.as_str()),
            ("demo-backup-2", "kvctl: object store: 403 SignatureDoesNotMatch")
        );
        assert_eq!(r.restore_check, None);
        // The restore check: a success is the backup checked, a failure its reason.
        let verified = json!({ "task": "verify", "result": "valid", "key": "k", "revision": 7, "size": 1,
            "sha256": "cd", "time": "2026-01-01T10:00:00Z" });
        let check = |j: JobObs| records(&[JobObs { task: Task::RestoreCheck, ..j }]).restore_check;
        assert_eq!(
            check(JobObs { message: Some(verified.to_string()), ..ok.clone() }).map(|r| r.map(|b| b.revision)),
            Some(Ok(7))
        );
        let why = check(failed.clone()).expect("ended").expect_err("failed");
        assert!(why.contains("demo-backup-2") && why.contains("SignatureDoesNotMatch"), "{why}");
        assert_eq!(check(JobObs { failed: false, failure: None, ..failed }), None, "still running");
    }

    #[test]
    fn defrag_results_sum_members() {
        let msg = json!({ "members": [ { "name": "demo-1", "id": "a", "bytesFreed": 100 },
                                       { "name": "demo-0", "id": "b", "bytesFreed": 50 } ],
                          "skipped": [], "leaderMovedTo": "demo-1", "time": "2026-01-01T10:00:00Z" });
        let r = parse_defrag(&msg.to_string()).expect("parses");
        assert_eq!((r.member.as_str(), r.bytes_freed), ("demo-1,demo-0", 150));
        let none = parse_defrag(r#"{"members":[],"time":"2026-01-01T10:00:00Z"}"#).expect("all skipped");
        assert_eq!((none.member.as_str(), none.bytes_freed), ("", 0));
        for bad in ["", "{}", "[1]", r#"{"members":[],"time":"yesterday"}"#, "\u{0}"] {
            assert_eq!(parse_defrag(bad), None, "{bad:?}");
            assert_eq!(parse_compaction(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn maintenance_jobs_carry_their_pods_termination_messages() {
        let mut kc2 = crate::fixtures::kvcluster("demo", 3);
        kc2.spec.defrag = Some(crate::crd::DefragSpec { schedule: "0 3 * * *".into(), free_threshold: 0.2 });
        let cj = crate::resources::cronjob(&kc2, Task::Defrag).expect("cronjob");
        let labels = crate::naming::maintenance_labels("demo", "defrag");
        let job = |name: &str, uid: &str, succeeded: i32| -> Job {
            serde_json::from_value(json!({
                "metadata": { "name": name, "uid": uid, "labels": labels },
                "status": { "succeeded": succeeded, "completionTime": "2026-01-01T10:00:00Z" }
            }))
            .expect("job")
        };
        let job_pod = |uid: &str, exit: i32, msg: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": { "name": format!("p-{uid}"), "labels": labels,
                              "ownerReferences": [ { "apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": uid } ] },
                "status": { "containerStatuses": [ { "name": "kvctl", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": { "terminated": { "exitCode": exit, "message": msg } } } ] }
            }))
            .expect("pod")
        };
        let (crons, jobs) = observe(
            &[cj],
            &[job("demo-defrag-1", "u1", 1), job("demo-defrag-2", "u2", 0)],
            &[job_pod("u1", 0, "{\"ok\":1}"), job_pod("u2", 1, "boom")],
        );
        assert_eq!(crons.keys().copied().collect::<Vec<_>>(), vec![Task::Defrag]);
        assert!(crons[&Task::Defrag].is_some(), "spec hash read");
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].task, jobs[0].succeeded, jobs[0].message.as_deref()),
            (Task::Defrag, true, Some("{\"ok\":1}"))
        );
        assert_eq!((jobs[1].succeeded, jobs[1].message.as_deref()), (false, None), "failed pods give no result");
        assert_eq!(jobs[0].completed, Some("2026-01-01T10:00:00Z".parse().expect("ts")));
    }
}
