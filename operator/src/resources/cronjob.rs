//! The maintenance CronJobs: `<name>-compact` runs `kvctl compact`,
//! `<name>-defrag` runs `kvctl defrag --rolling`, `<name>-backup` runs
//! `kvctl backup save` (with the store's credentials and claim), on the spec's schedules
//! (UTC), in the cluster's own kvd image (which ships kvctl), against the
//! client Service. concurrencyPolicy Forbid, so runs never overlap; the
//! result line kvctl writes to `/dev/termination-log` is how the operator
//! learns what a run did (`crate::maintenance::records`).

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::backup::StoreIo;
use super::meta;
use crate::crd::KvCluster;
use crate::naming;

/// Annotation on a CronJob carrying the hash of the rest of it.
pub const SPEC_HASH: &str = "kvd.io/spec-hash";

/// A maintenance task: the scheduled ones, and the check of a backup a
/// cluster is to be created from (a one-off Job).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    #[default]
    Compact,
    Defrag,
    Backup,
    RestoreCheck,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Compact, Task::Defrag, Task::Backup, Task::RestoreCheck];
    /// The tasks with a CronJob.
    pub const SCHEDULED: [Task; 3] = [Task::Compact, Task::Defrag, Task::Backup];

    /// The CronJob name suffix and the component label.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Compact => "compact",
            Task::Defrag => "defrag",
            Task::Backup => "backup",
            Task::RestoreCheck => super::backup::RESTORE_CHECK,
        }
    }

    /// The task named `s` (a component label).
    pub fn parse(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

fn kvctl_args(kc: &KvCluster, task: Task) -> Option<(String, Vec<String>)> {
    let tls = kc.tls().client_tls();
    let endpoints = naming::client_service_url(&kc.name_any(), &kc.namespace().unwrap_or_default(), tls);
    let mut args = match task {
        Task::Backup => vec!["backup".to_string(), "save".into()],
        t => vec![t.as_str().to_string()],
    };
    args.extend(["--endpoints".into(), endpoints]);
    if tls {
        let dir = naming::CLIENT_TLS_DIR;
        args.extend([
            format!("--cacert={dir}/ca.crt"),
            format!("--cert={dir}/tls.crt"),
            format!("--key={dir}/tls.key"),
        ]);
    }
    let schedule = match task {
        Task::Compact => {
            let c = kc.spec.compaction.as_ref()?;
            match (&c.retention_duration, c.retention_revisions) {
                (Some(d), _) => args.extend(["--retain-duration".into(), d.clone()]),
                (None, Some(n)) => args.extend(["--retain-revisions".into(), n.to_string()]),
                (None, None) => {}
            }
            c.schedule.clone()
        }
        Task::Defrag => {
            let d = kc.spec.defrag.as_ref()?;
            args.extend(["--rolling".into(), "--skip-if-free-below".into(), d.free_threshold.to_string()]);
            d.schedule.clone()
        }
        Task::Backup => {
            let b = kc.spec.backup.as_ref()?;
            let to = super::backup::store_io(&b.store).url;
            args.extend(["--to".into(), to, "--cluster".into(), super::backup::backup_name(kc)]);
            args.extend(["--compression".into(), b.compression.as_str().into()]);
            if let Some(n) = b.keep_last {
                args.extend(["--keep-last".into(), n.to_string()]);
            }
            if let Some(a) = &b.max_age {
                args.extend(["--max-age".into(), a.clone()]);
            }
            b.schedule.clone()
        }
        Task::RestoreCheck => return None,
    };
    Some((schedule, args))
}

/// The pod of a kvctl Job: kvctl from the cluster's image with `args`, the
/// volumes, mounts and environment of `io`, never restarted (the Job
/// retries), its termination message the result line (or the log's end on
/// an error), on the members' tolerations and node selector.
pub(super) fn kvctl_pod(kc: &KvCluster, args: Vec<String>, io: StoreIo) -> PodSpec {
    let over = &kc.spec.pod_template;
    PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![Container {
            name: "kvctl".into(),
            image: Some(kc.spec.image()),
            command: Some(vec!["kvctl".into()]),
            args: Some(args),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            volume_mounts: (!io.mounts.is_empty()).then_some(io.mounts),
            env_from: (!io.env_from.is_empty()).then_some(io.env_from),
            resources: Some(over.job_resources.clone().unwrap_or_else(default_job_resources)),
            security_context: Some(super::statefulset::container_security()),
            ..Container::default()
        }],
        volumes: (!io.volumes.is_empty()).then_some(io.volumes),
        tolerations: (!over.tolerations.is_empty()).then(|| over.tolerations.clone()),
        node_selector: (!over.node_selector.is_empty()).then(|| over.node_selector.clone()),
        priority_class_name: over.priority_class_name.clone(),
        image_pull_secrets: (!over.image_pull_secrets.is_empty()).then(|| over.image_pull_secrets.clone()),
        service_account_name: over.service_account_name.clone(),
        security_context: Some(super::statefulset::pod_security()),
        ..PodSpec::default()
    }
}

/// A kvctl Job's resources unless `podTemplate.jobResources` says: it
/// streams (a backup of 187 MiB peaked at 37 MiB), so small requests and no
/// limit (a restore of a large database must not be killed halfway).
fn default_job_resources() -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(
            [("cpu".to_string(), Quantity("100m".into())), ("memory".to_string(), Quantity("128Mi".into()))].into(),
        ),
        ..Default::default()
    }
}

/// The CronJob for `task`, or None when the spec has no schedule for it.
pub fn cronjob(kc: &KvCluster, task: Task) -> Option<CronJob> {
    let (schedule, args) = kvctl_args(kc, task)?;
    let cluster = kc.name_any();
    let labels = naming::maintenance_labels(&cluster, task.as_str());
    // With client TLS the Job presents the Jobs' client certificate.
    let tls = kc.tls().jobs.map(|s| super::statefulset::secret_volume("client-tls", &s, naming::CLIENT_TLS_DIR));
    let (volumes, mounts): (Vec<_>, Vec<_>) = tls.into_iter().unzip();
    let mut io = StoreIo { url: String::new(), env_from: Vec::new(), volumes, mounts };
    if let (Task::Backup, Some(b)) = (task, &kc.spec.backup) {
        let store = super::backup::store_io(&b.store);
        io.volumes.extend(store.volumes);
        io.mounts.extend(store.mounts);
        io.env_from = store.env_from;
    }
    let pod = kvctl_pod(kc, args, io);
    let job_meta = ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() };
    let mut m = meta(kc, naming::cronjob(&cluster, task.as_str()));
    m.labels = Some(labels);
    let mut cj = CronJob {
        metadata: m,
        spec: CronJobSpec {
            schedule,
            time_zone: Some("Etc/UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(1),
            failed_jobs_history_limit: Some(1),
            job_template: JobTemplateSpec {
                metadata: Some(job_meta.clone()),
                spec: Some(JobSpec {
                    backoff_limit: Some(1),
                    template: PodTemplateSpec { metadata: Some(job_meta), spec: Some(pod) },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        },
        status: None,
    };
    let hash = super::fnv(&serde_json::to_vec(&cj).unwrap_or_default());
    cj.metadata.annotations = Some([(SPEC_HASH.to_string(), hash)].into());
    Some(cj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CompactionSpec, DefragSpec};
    use crate::fixtures::kvcluster;

    #[test]
    fn cronjobs_follow_the_spec() {
        let mut kc = kvcluster("demo", 3);
        assert!(cronjob(&kc, Task::Compact).is_none() && cronjob(&kc, Task::Defrag).is_none());
        kc.spec.version = Some("1.2.3".into());
        kc.spec.compaction = Some(CompactionSpec {
            schedule: "*/5 * * * *".into(),
            retention_revisions: Some(1000),
            retention_duration: None,
        });
        kc.spec.defrag = Some(DefragSpec { schedule: "0 3 * * *".into(), free_threshold: 0.3 });
        let cj = cronjob(&kc, Task::Compact).expect("compact");
        assert_eq!(cj.metadata.name.as_deref(), Some("demo-compact"));
        let spec = &cj.spec;
        assert_eq!(spec.schedule, "*/5 * * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let job = spec.job_template.spec.as_ref().expect("job");
        let pod = job.template.spec.as_ref().expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/kvd-io/kvd:1.2.3"));
        assert_eq!(c.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        let args = c.args.clone().expect("args").join(" ");
        assert_eq!(args, "compact --endpoints http://demo-client.ns.svc:2379 --retain-revisions 1000");
        // Hardened as the members are, with small requests and no limit.
        let sc = c.security_context.as_ref().expect("container security");
        assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));
        let psc = pod.security_context.as_ref().expect("pod security");
        assert_eq!((psc.run_as_non_root, psc.run_as_user), (Some(true), Some(65532)));
        let res = c.resources.as_ref().expect("resources");
        assert_eq!(res.requests.as_ref().map(|r| r["memory"].0.as_str()), Some("128Mi"));
        assert!(res.limits.is_none());
        kc.spec.pod_template.job_resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some(
                [("memory".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()))].into(),
            ),
            ..Default::default()
        });
        kc.spec.pod_template.priority_class_name = Some("high".into());
        let cj2 = cronjob(&kc, Task::Compact).expect("compact");
        let pod2 = cj2.spec.job_template.spec.expect("job").template.spec.expect("pod");
        assert_eq!(pod2.priority_class_name.as_deref(), Some("high"));
        assert!(pod2.containers[0].resources.as_ref().and_then(|r| r.limits.as_ref()).is_some());
        kc.spec.pod_template.job_resources = None;
        kc.spec.pod_template.priority_class_name = None;
        // Job pods must not match the members' selector (PDB, member pod list).
        let pod_labels = job.template.metadata.as_ref().and_then(|m| m.labels.clone()).expect("labels");
        assert_eq!(pod_labels.get("app.kubernetes.io/name").map(String::as_str), Some("kvctl"));
        let owner = &cj.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("KvCluster", "demo"));
        let d = cronjob(&kc, Task::Defrag).expect("defrag");
        let args = d.spec.job_template.spec.expect("job").template.spec.expect("pod").containers[0]
            .args
            .clone()
            .expect("args");
        assert_eq!(args[3..], ["--rolling", "--skip-if-free-below", "0.3"]);
        // The hash moves with the spec.
        let h =
            |kc: &KvCluster| cronjob(kc, Task::Compact).and_then(|c| c.metadata.annotations?.get(SPEC_HASH).cloned());
        let before = h(&kc);
        if let Some(c) = kc.spec.compaction.as_mut() {
            c.retention_duration = Some("1h".into());
        }
        assert_ne!(h(&kc), before);
        // Client TLS: https, the client secret mounted, etcdctl's TLS flags.
        kc.spec.tls = Some(crate::crd::TlsSpec { client_secret_name: Some("certs".into()), ..Default::default() });
        let pod = cronjob(&kc, Task::Compact).expect("compact").spec.job_template.spec.expect("job").template.spec;
        let pod = pod.expect("pod");
        let args = pod.containers[0].args.clone().expect("args").join(" ");
        let want = "compact --endpoints https://demo-client.ns.svc:2379 --cacert=/etc/kvd/tls/client/ca.crt \
                    --cert=/etc/kvd/tls/client/tls.crt --key=/etc/kvd/tls/client/tls.key";
        assert!(args.starts_with(want), "{args}");
        let volume = &pod.volumes.expect("volumes")[0];
        assert_eq!(volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some("certs"));
        assert_eq!(pod.containers[0].volume_mounts.as_ref().expect("mounts")[0].mount_path, "/etc/kvd/tls/client");
    }
}
