//! Scheduled compaction and defragmentation run as CronJobs of `kvctl`
//! (`resources::cronjob`); this module holds the pure parts the controller
//! needs around them: what `observe` keeps of the CronJobs, their finished
//! Jobs and those Jobs' pods (`observe`), which CronJob the planner creates,
//! updates or deletes (`cronjob_step`), and what the newest successful
//! Jobs' termination messages (kvctl's JSON result line) put into
//! `status.lastCompaction` and `status.lastDefrag` (`records`). A message
//! that does not parse is ignored.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Deserialize;

use crate::crd::{CompactionRecord, DefragRecord};
use crate::observe::Observation;
use crate::planner::Action;
use crate::resources::{SPEC_HASH, Task};

/// One finished (or running) maintenance Job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobObs {
    pub task: Task,
    pub succeeded: bool,
    pub completed: Option<Timestamp>,
    /// The termination message of its kvctl container, when it terminated.
    pub message: Option<String>,
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
            let message = pods
                .iter()
                .filter(|p| p.owner_references().iter().any(|o| o.kind == "Job" && Some(&o.uid) == uid.as_ref()))
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
                .filter(|t| t.exit_code == 0)
                .find_map(|t| t.message.clone());
            Some(JobObs {
                task,
                succeeded: st.and_then(|s| s.succeeded).unwrap_or(0) > 0,
                completed: st.and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
                message,
            })
        })
        .collect();
    (crons, jobs)
}

/// Create, update or delete one CronJob so that they match the spec.
pub fn cronjob_step(obs: &Observation) -> Option<Action> {
    for task in Task::ALL {
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

/// What the finished Jobs report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Records {
    pub compaction: Option<CompactionRecord>,
    pub defrag: Option<DefragRecord>,
}

/// The newest parsable result of a successful Job, per task.
pub fn records(jobs: &[JobObs]) -> Records {
    let newest = |task: Task| {
        let mut ok: Vec<&JobObs> = jobs.iter().filter(|j| j.task == task && j.succeeded).collect();
        ok.sort_by_key(|j| std::cmp::Reverse(j.completed));
        ok.into_iter().filter_map(|j| j.message.as_deref())
    };
    Records {
        compaction: newest(Task::Compact).find_map(parse_compaction),
        defrag: newest(Task::Defrag).find_map(parse_defrag),
    }
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
        JobObs { task, succeeded, completed: completed.parse().ok(), message: Some(message.into()) }
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
