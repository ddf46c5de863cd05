//! The backup and restore pieces of a KvCluster, all running `kvctl
//! backup` from the cluster's image: where a store is mounted or how it is
//! reached (`store_io`), the on-demand backup Job made from the backup
//! CronJob's template (`backup_now_job`), the Job that checks a backup
//! before a cluster is created from it (`restore_check_job`), and the init
//! container that restores each initial member from that same checked
//! backup (`restore_init_container`).

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, PersistentVolumeClaimVolumeSource, PodTemplateSpec, SecretEnvSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::{Task, cronjob, fnv, meta};
use crate::crd::{BackupStore, KvCluster};
use crate::naming::{self, DATA_DIR, PEER_PORT};

/// Where a PVC store is mounted in kvctl's container.
pub const BACKUPS_DIR: &str = "/backups";
/// Annotation asking for a backup now; a new value, a new backup.
pub const BACKUP_NOW: &str = "kvd.io/backup-now";
/// Component label of the restore check Job.
pub const RESTORE_CHECK: &str = "restore-check";

/// How kvctl reaches a store: the URL to give it, the credentials'
/// environment and the claim's volume.
pub struct StoreIo {
    pub url: String,
    pub env_from: Vec<EnvFromSource>,
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
}

pub fn store_io(store: &BackupStore) -> StoreIo {
    let env_from = store
        .credentials_secret
        .iter()
        .map(|s| EnvFromSource {
            secret_ref: Some(SecretEnvSource { name: s.clone(), optional: None }),
            ..EnvFromSource::default()
        })
        .collect();
    let Some(pvc) = &store.pvc else {
        return StoreIo { url: store.url.clone().unwrap_or_default(), env_from, volumes: vec![], mounts: vec![] };
    };
    let volume = Volume {
        name: "backups".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: pvc.claim_name.clone(),
            read_only: None,
        }),
        ..Volume::default()
    };
    let mount = VolumeMount { name: "backups".into(), mount_path: BACKUPS_DIR.into(), ..VolumeMount::default() };
    let url = match &pvc.path {
        Some(p) => format!("file://{BACKUPS_DIR}/{p}"),
        None => format!("file://{BACKUPS_DIR}"),
    };
    StoreIo { url, env_from, volumes: vec![volume], mounts: vec![mount] }
}

/// The name backups of `kc` are stored under: `<namespace>/<name>`.
pub fn backup_name(kc: &KvCluster) -> String {
    format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any())
}

/// A Job running `kvctl` with `args` once, with `io`'s store.
fn kvctl_job(kc: &KvCluster, name: String, component: &str, args: Vec<String>, io: StoreIo) -> Job {
    let cluster = kc.name_any();
    let labels = naming::maintenance_labels(&cluster, component);
    let pod = super::cronjob::kvctl_pod(kc, args, io);
    let mut m = meta(kc, name);
    m.labels = Some(labels.clone());
    Job {
        metadata: m,
        spec: Some(JobSpec {
            backoff_limit: Some(1),
            // Its result is in the KvCluster's status by then.
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The name of the on-demand backup Job for `token`.
pub fn backup_now_name(kc: &KvCluster, token: &str) -> String {
    format!("{}-backup-now-{}", kc.name_any(), &fnv(token.as_bytes())[..10])
}

/// The Job of an on-demand backup for `token` (the backup CronJob's
/// template, named after the token), or None without `spec.backup`.
pub fn backup_now_job(kc: &KvCluster, token: &str) -> Option<Job> {
    let cj = cronjob(kc, Task::Backup)?;
    let mut job_spec = cj.spec.job_template.spec?;
    job_spec.ttl_seconds_after_finished = Some(86_400);
    let mut m = meta(kc, backup_now_name(kc, token));
    m.labels = cj.spec.job_template.metadata.and_then(|m| m.labels);
    m.annotations = Some([(BACKUP_NOW.to_string(), token.to_string())].into());
    Some(Job { metadata: m, spec: Some(job_spec), status: None })
}

/// The Job that checks `spec.bootstrap.fromBackup` (`kvctl backup
/// verify`), named after what it checks so that a changed spec is checked
/// anew; None without one.
pub fn restore_check_job(kc: &KvCluster) -> Option<Job> {
    let from = kc.spec.bootstrap.as_ref()?.from_backup.as_ref()?;
    let io = store_io(&from.store);
    let cluster = from.cluster.clone().unwrap_or_else(|| backup_name(kc));
    let mut args = vec!["backup".into(), "verify".into(), "--from".into(), io.url.clone(), "--cluster".into(), cluster];
    if let Some(k) = &from.key {
        args.extend(["--key".into(), k.clone()]);
    }
    let hash = fnv(&serde_json::to_vec(from).unwrap_or_default());
    let name = format!("{}-{RESTORE_CHECK}-{}", kc.name_any(), &hash[..10]);
    Some(kvctl_job(kc, name, RESTORE_CHECK, args, io))
}

/// The init container of the member pods of a cluster created from a
/// backup: each initial member restores the checked backup
/// (`status.restoredFrom`, so every member has the same one) into its data
/// dir with the new cluster's member ids; a member joining later
/// (`initial-cluster-state: existing`) or restarting with data skips it.
/// None unless the cluster is created from a checked backup.
pub fn restore_init_container(kc: &KvCluster, env: &[EnvVar]) -> Option<(Container, Vec<Volume>)> {
    let from = kc.spec.bootstrap.as_ref()?.from_backup.as_ref()?;
    let key = kc.status.as_ref()?.restored_from.as_ref()?.key.clone();
    let io = store_io(&from.store);
    let ns = kc.namespace().unwrap_or_default();
    let name = kc.name_any();
    let peer = naming::scheme(kc.tls().peer_tls());
    let host = format!("$(POD_NAME).{}.{ns}.svc", naming::peer_service(&name));
    let cluster = from.cluster.clone().unwrap_or_else(|| backup_name(kc));
    let args = vec![
        "backup".into(),
        "restore".into(),
        "--from".into(),
        io.url.clone(),
        "--cluster".into(),
        cluster,
        "--key".into(),
        key,
        "--skip-if-exists".into(),
        "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)".into(),
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}"),
        "--initial-cluster=$(INITIAL_CLUSTER)".into(),
        format!("--initial-cluster-token={ns}-{name}"),
        format!("--initial-advertise-peer-urls={peer}://{host}:{PEER_PORT}"),
    ];
    // The member container's POD_NAME and initial-cluster variables.
    let env: Vec<EnvVar> = env
        .iter()
        .filter(|e| ["POD_NAME", "INITIAL_CLUSTER", "INITIAL_CLUSTER_STATE"].contains(&e.name.as_str()))
        .cloned()
        .collect();
    let container = Container {
        name: "restore".into(),
        image: Some(kc.spec.image()),
        command: Some(vec!["kvctl".into()]),
        args: Some(args),
        env: Some(env),
        env_from: (!io.env_from.is_empty()).then_some(io.env_from),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(super::statefulset::container_security()),
        volume_mounts: Some(
            [VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() }]
                .into_iter()
                .chain(io.mounts)
                .collect(),
        ),
        ..Container::default()
    };
    Some((container, io.volumes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackupSpec, BootstrapSpec, FromBackup, PvcStore};
    use crate::fixtures::kvcluster;
    use k8s_openapi::api::core::v1::PodSpec;

    fn s3() -> BackupStore {
        BackupStore { url: Some("s3://bkt/kvd".into()), credentials_secret: Some("s3-creds".into()), pvc: None }
    }

    fn pod_of(job: &JobSpec) -> &PodSpec {
        job.template.spec.as_ref().expect("pod")
    }

    #[test]
    fn backup_cronjob_and_on_demand_job() {
        let mut kc = kvcluster("demo", 3);
        assert!(cronjob(&kc, Task::Backup).is_none() && backup_now_job(&kc, "t").is_none());
        kc.spec.backup = Some(BackupSpec {
            schedule: "0 */6 * * *".into(),
            store: s3(),
            keep_last: Some(5),
            max_age: Some("7d".into()),
            compression: crate::crd::BackupCompression::Gzip,
        });
        let cj = cronjob(&kc, Task::Backup).expect("cronjob");
        assert_eq!(cj.metadata.name.as_deref(), Some("demo-backup"));
        let job = cj.spec.job_template.spec.as_ref().expect("job");
        let c = &pod_of(job).containers[0];
        let args = c.args.clone().expect("args").join(" ");
        assert_eq!(
            args,
            "backup save --endpoints http://demo-client.ns.svc:2379 --to s3://bkt/kvd --cluster ns/demo \
             --compression gzip --keep-last 5 --max-age 7d"
        );
        let secret = c.env_from.as_ref().expect("envFrom")[0].secret_ref.as_ref().expect("secret");
        assert_eq!(secret.name, "s3-creds");
        // On demand: the same pod, a name per token, labelled as a backup Job.
        let now = backup_now_job(&kc, "2026-01-01").expect("job");
        let name = now.metadata.name.clone().expect("name");
        assert!(name.starts_with("demo-backup-now-") && name.len() <= 63, "{name}");
        assert_ne!(backup_now_job(&kc, "other").and_then(|j| j.metadata.name), Some(name));
        assert_eq!(pod_of(now.spec.as_ref().expect("spec")).containers[0].args, c.args);
        let labels = now.metadata.labels.expect("labels");
        assert_eq!(labels.get("app.kubernetes.io/component").map(String::as_str), Some("backup"));
        // A PVC store: mounted, a file:// URL.
        kc.spec.backup.as_mut().expect("backup").store = BackupStore {
            url: None,
            credentials_secret: None,
            pvc: Some(PvcStore { claim_name: "bk".into(), path: Some("kvd".into()) }),
        };
        let cj = cronjob(&kc, Task::Backup).expect("cronjob");
        let pod = pod_of(cj.spec.job_template.spec.as_ref().expect("job"));
        assert!(pod.containers[0].args.as_ref().expect("args").contains(&"file:///backups/kvd".to_string()));
        let v = &pod.volumes.as_ref().expect("volumes")[0];
        assert_eq!(v.persistent_volume_claim.as_ref().map(|p| p.claim_name.as_str()), Some("bk"));
        assert_eq!(pod.containers[0].volume_mounts.as_ref().expect("mounts")[0].mount_path, BACKUPS_DIR);
    }

    #[test]
    fn a_cluster_from_a_backup_checks_it_then_restores_the_checked_key() {
        let mut kc = kvcluster("copy", 3);
        assert!(restore_check_job(&kc).is_none());
        kc.spec.bootstrap = Some(BootstrapSpec {
            from_backup: Some(FromBackup { store: s3(), cluster: Some("prod/demo".into()), key: None }),
        });
        let check = restore_check_job(&kc).expect("check job");
        let args = pod_of(check.spec.as_ref().expect("spec")).containers[0].args.clone().expect("args").join(" ");
        assert_eq!(args, "backup verify --from s3://bkt/kvd --cluster prod/demo");
        // Another source, another check.
        let mut other = kc.clone();
        if let Some(f) = other.spec.bootstrap.as_mut().and_then(|b| b.from_backup.as_mut()) {
            f.key = Some("x.snap".into());
        }
        assert_ne!(restore_check_job(&other).and_then(|j| j.metadata.name), check.metadata.name);

        // No init container until the checked backup is in the status.
        let init = |kc: &KvCluster| super::super::pod_template(kc).spec.and_then(|s| s.init_containers);
        assert_eq!(init(&kc), None);
        kc.status = Some(crate::crd::KvClusterStatus {
            restored_from: crate::maintenance::parse_backup(
                r#"{"key":"kvd/prod/demo/20260101T000000Z-r9.snap.zst","revision":9,"size":1,"sha256":"ab","time":"2026-01-01T00:00:00Z"}"#,
            ),
            ..Default::default()
        });
        let c = &init(&kc).expect("init containers")[0];
        let args = c.args.clone().expect("args").join(" ");
        assert!(
            args.starts_with(
                "backup restore --from s3://bkt/kvd --cluster prod/demo --key kvd/prod/demo/20260101T000000Z-r9.snap.zst \
                 --skip-if-exists --initial-cluster-state=$(INITIAL_CLUSTER_STATE) --name=$(POD_NAME) --data-dir=/var/lib/kvd"
            ),
            "{args}"
        );
        assert!(
            args.contains("--initial-cluster-token=ns-copy") && args.contains("--initial-cluster=$(INITIAL_CLUSTER)")
        );
        let env: Vec<&str> = c.env.as_ref().expect("env").iter().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["POD_NAME", "INITIAL_CLUSTER", "INITIAL_CLUSTER_STATE"]);
        assert_eq!(
            c.env_from.as_ref().expect("envFrom")[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("s3-creds")
        );
    }
}
