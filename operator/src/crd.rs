//! The `KvCluster` custom resource (`kvd.io/v1alpha1`): spec with defaults and
//! CEL validation rules, and the status the controller writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image used when neither `image` nor `version` is set.
pub const DEFAULT_IMAGE_REPO: &str = "ghcr.io/kvd-io/kvd";
/// Tag used when neither `image` nor `version` is set: the operator's own
/// version, the kvd release it is built and tested with. (It was `latest`,
/// which kubelet pulls on every start, so a node without registry access
/// could not start members at all, and which names no version to gate.)
pub const DEFAULT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// etcd's default backend quota (2 GiB), used when `quotaBackendBytes` is unset or 0.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 << 30;

/// Desired state of a kvd cluster.
// Several printcolumns repeat `type_`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kvd.io",
    version = "v1alpha1",
    kind = "KvCluster",
    namespaced,
    shortname = "kvc",
    status = "KvClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.replicas % 2 == 1 || (has(self.allowEvenReplicas) && self.allowEvenReplicas)")
    .message("replicas must be odd unless allowEvenReplicas is true"))]
#[serde(rename_all = "camelCase")]
pub struct KvClusterSpec {
    /// Number of voting members.
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// Full container image (wins over `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// kvd version: the tag of the default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Persistent storage of each member.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Container resources of each member (default: requests of 250m CPU
    /// and 512Mi memory, no limits: a memory limit kills a database under
    /// load instead of slowing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Backend quota in bytes (`--quota-backend-bytes`; 0 or unset = 2 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    /// Scheduled compaction: a CronJob `<name>-compact` running `kvctl compact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactionSpec>,
    /// Scheduled rolling defragmentation: a CronJob `<name>-defrag` running `kvctl defrag --rolling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defrag: Option<DefragSpec>,
    /// Scheduled backups: a CronJob `<name>-backup` running `kvctl backup
    /// save`, and on-demand ones with the annotation `kvd.io/backup-now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// How a new cluster starts: empty, or from a backup. Read only before
    /// the cluster first forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// Alarm handling.
    #[serde(default)]
    pub alarms: AlarmsSpec,
    /// Overrides merged into the member pods.
    #[serde(default)]
    pub pod_template: PodTemplateOverrides,
    /// TLS of client and peer traffic (default: mode Operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// etcd authentication. Unset, the operator leaves it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// kvd's own settings, each one of its etcd-compatible flags; unset
    /// fields keep kvd's defaults (etcd's). A change restarts the members
    /// one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSpec>,
    /// Prometheus Operator monitor objects.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Allow an even number of replicas (no fault-tolerance gain over n-1).
    #[serde(default)]
    pub allow_even_replicas: bool,
    /// Opt in to automatic recovery from a lost quorum. Off, the operator only
    /// reports Degraded/QuorumLost. On, once quorum has been lost for
    /// `failedMemberTimeoutSeconds`, it restarts the voter with the highest
    /// raft index that still answers as the only member of a new cluster,
    /// keeping its data (kvd's `--force-new-cluster-member`), recycles the
    /// other members' volumes and adds them back as learners (Degraded
    /// reason QuorumRecovery and Events meanwhile). Writes that only the lost
    /// members had are lost, and members that come back with their old data
    /// before they are recycled could form a second cluster (reported as
    /// SplitBrain): turn it on only where lost members do not come back.
    #[serde(default)]
    pub quorum_loss_recovery: bool,
    /// Seconds a member's pod may fail (crash-loop, stay unready or
    /// unreachable) before the member is replaced with a fresh volume; default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30))]
    pub failed_member_timeout_seconds: Option<u32>,
}

/// What happens to a member's PersistentVolumeClaim.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Retention {
    /// Keep the claim (and its data).
    #[default]
    Retain,
    /// Delete the claim.
    Delete,
}

/// Member storage. The class is immutable; the size may grow (the
/// operator expands each member's claim, where its StorageClass allows it)
/// but never shrink.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName)")
    .message("storageClassName cannot be added or removed"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size of each member's volume (a quantity, e.g. `8Gi`). It
    /// may grow: the operator then expands the members' claims one at a
    /// time (the StorageClass must have `allowVolumeExpansion`); it cannot
    /// shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("storage size must be a quantity, e.g. 8Gi"),
        validation = Rule::new("!isQuantity(oldSelf) || !isQuantity(self) || quantity(self).compareTo(quantity(oldSelf)) >= 0")
            .message("storage size can grow but not shrink")
    )]
    pub size: String,
    /// StorageClass of the claims; immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storageClassName is immutable"))]
    pub storage_class_name: Option<String>,
    /// Claim retention when the cluster scales down.
    #[serde(default)]
    pub when_scaled: Retention,
    /// Claim retention when the KvCluster is deleted.
    #[serde(default)]
    pub when_deleted: Retention,
}

fn default_storage_size() -> String {
    "8Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            when_scaled: Retention::Retain,
            when_deleted: Retention::Retain,
        }
    }
}

/// Scheduled compaction.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompactionSpec {
    /// Five-field cron schedule (UTC), e.g. `"0 * * * *"`.
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// Keep this many revisions below the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retention_revisions: Option<i64>,
    /// Keep at least this much history (Go-style duration, e.g. `"1h"` or
    /// `"90m"`): each run compacts to the revision that was current this long
    /// ago, from (time, revision) checkpoints kvctl keeps in the cluster under
    /// the key `kvd.io/kvctl/compaction-checkpoints`. Wins over `retentionRevisions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub retention_duration: Option<String>,
}

/// Scheduled defragmentation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefragSpec {
    /// Five-field cron schedule (UTC).
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// Skip members whose free fraction `(dbSize - dbSizeInUse) / dbSize` is below this.
    #[serde(default = "default_defrag_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub free_threshold: f64,
}

fn default_defrag_threshold() -> f64 {
    0.2
}

/// Where backups are: an object store URL with a Secret of credentials, or
/// a PersistentVolumeClaim.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.url) != has(self.pvc)").message("set exactly one of url and pvc"))]
#[serde(rename_all = "camelCase")]
pub struct BackupStore {
    /// `s3://bucket/prefix` (any S3-compatible store), `gs://bucket/prefix`
    /// or `az://container/prefix`. Backups of a cluster go under
    /// `<prefix>/<namespace>/<name>/`, named `<time>-r<revision>.snap[.gz|.zst]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(s3|s3a|gs|az)://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?$"))]
    pub url: Option<String>,
    /// Secret whose keys become the backup Job's environment, named as the
    /// object_store crate reads them: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` (an
    /// S3-compatible server), `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT_KEY`;
    /// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// A claim to store into instead (ReadWriteMany if backups and restores
    /// may run on different nodes), mounted at `/backups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcStore>,
}

/// A PersistentVolumeClaim holding backups.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcStore {
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// Directory inside the claim (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"))]
    pub path: Option<String>,
}

/// Compression of backup objects.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupCompression {
    None,
    Gzip,
    #[default]
    Zstd,
}

impl BackupCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupCompression::None => "none",
            BackupCompression::Gzip => "gzip",
            BackupCompression::Zstd => "zstd",
        }
    }
}

/// Scheduled backups.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Five-field cron schedule (UTC), e.g. `"0 */6 * * *"`.
    #[schemars(length(min = 1))]
    pub schedule: String,
    pub store: BackupStore,
    /// Keep at most this many backups of the cluster (the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<u32>,
    /// Remove backups older than this (`"7d"`, `"36h"`); the newest is always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub max_age: Option<String>,
    #[serde(default)]
    pub compression: BackupCompression,
}

/// How a new cluster starts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore every initial member from one backup (checked first: a
    /// missing or damaged backup creates nothing and sets Degraded reason
    /// BackupInvalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<FromBackup>,
}

/// The backup a new cluster starts from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FromBackup {
    pub store: BackupStore,
    /// The cluster the backups were taken of, as `<namespace>/<name>`
    /// (default: this cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The object key, or its file name under the cluster's prefix; an
    /// etcd snapshot (`etcdctl snapshot save`) put there works too. Default:
    /// the newest backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Alarm handling.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmsSpec {
    /// Compact, defragment and disarm on NOSPACE.
    #[serde(default = "default_true")]
    pub auto_remediate: bool,
}

fn default_true() -> bool {
    true
}

impl Default for AlarmsSpec {
    fn default() -> Self {
        AlarmsSpec { auto_remediate: true }
    }
}

/// Pod overrides.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The members' ServiceAccount (default: the namespace's `default`);
    /// the kvctl Jobs run as it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Resources of the kvctl Jobs' containers (compaction, defrag, backup,
    /// the restore check); default: requests of 100m CPU and 128Mi memory,
    /// no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_resources: Option<ResourceRequirements>,
    /// Spreading members when `affinity` is not given: `Preferred` (the
    /// default) asks the scheduler for one member per node and an even
    /// spread over zones; `Required` refuses two members on one node (the
    /// zone spread stays a preference: nodes without a zone label would
    /// otherwise take no member); `None` leaves scheduling alone.
    #[serde(default)]
    pub anti_affinity: AntiAffinity,
}

/// How members are spread over nodes and zones.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AntiAffinity {
    #[default]
    Preferred,
    Required,
    None,
}

/// How client and peer traffic is secured.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    /// The operator issues a CA for the cluster (Secret `<name>-ca`) and
    /// from it the members' serving certificate (`<name>-server-tls`), their
    /// peer certificate (`<name>-peer-tls`), a client certificate for users
    /// and the maintenance Jobs (`<name>-client-tls`) and its own
    /// (`<name>-operator-tls`), and renews each when a third of its
    /// lifetime is left. Client and peer traffic are mutual TLS.
    Operator,
    /// Secrets you provide: `clientSecretName` and `peerSecretName`.
    Secrets,
    /// cert-manager issues the four certificates of mode Operator (same
    /// Secret names, names, usages and common names) from the Issuer or
    /// ClusterIssuer `certManager.issuerRef` names, through Certificate
    /// resources the operator keeps, and renews them when a third of their
    /// lifetime is left. The issuer must write `ca.crt` (a CA or Vault
    /// issuer does).
    CertManager,
    /// Plain text.
    Disabled,
}

/// TLS of client and peer traffic. Without it (or without `mode`), a new
/// cluster gets `Operator` (or `Secrets` when a secret is named); a cluster
/// formed before the operator turned TLS on by default stays plain text.
/// The scheme cannot change once the cluster has formed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode == 'Secrets' || (!has(self.clientSecretName) && !has(self.peerSecretName))")
    .message("clientSecretName and peerSecretName are for mode Secrets"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'Secrets' || has(self.clientSecretName) || has(self.peerSecretName)")
    .message("mode Secrets needs clientSecretName or peerSecretName"))]
#[x_kube(validation = Rule::new("!has(self.certManager) || !has(self.mode) || self.mode == 'CertManager'")
    .message("certManager is for mode CertManager"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'CertManager' || has(self.certManager)")
    .message("mode CertManager needs certManager.issuerRef"))]
#[x_kube(validation = Rule::new("!has(self.certManager) || (!has(self.clientSecretName) && !has(self.peerSecretName))")
    .message("certManager and clientSecretName or peerSecretName exclude each other"))]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// Mode Secrets: client traffic over TLS with client-certificate
    /// authentication. Each Secret holds `tls.crt`, `tls.key` and `ca.crt`
    /// (the shape cert-manager writes). The members serve `tls.crt` (SANs
    /// `*.<name>-peer.<ns>.svc` and `<name>-client.<ns>.svc`) and accept
    /// clients signed by `ca.crt`. The operator and the maintenance Jobs
    /// present the same certificate, so it needs both the serverAuth and
    /// clientAuth usages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_name: Option<String>,
    /// Mode Secrets: peer traffic over mutual TLS: `tls.crt` (SAN
    /// `*.<name>-peer.<ns>.svc`, serverAuth and clientAuth) presented both
    /// ways, peers signed by `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret_name: Option<String>,
    /// Mode Operator: lifetime of the issued certificates (not the CA's,
    /// which is 10 years), e.g. `"2160h"` (the default, 90 days). They are
    /// renewed when a third of it is left; members reload renewed files
    /// without a restart. The annotation `kvd.io/rotate-certificates=<token>`
    /// renews them at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(m|h))+$"))]
    pub certificate_duration: Option<String>,
    /// Mode CertManager (implied when set): the cert-manager issuer of the
    /// cluster's certificates. `certificateDuration` sets their lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
}

/// cert-manager as the issuer of a cluster's certificates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    pub issuer_ref: IssuerRef,
}

/// An Issuer (in the cluster's namespace) or ClusterIssuer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(regex(pattern = r"^(Issuer|ClusterIssuer)$"))]
    pub kind: String,
    /// The issuer's API group (default `cert-manager.io`; external issuers have their own).
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// kvd flags, typed: the settings an etcd operator is asked for, not a
/// free list of strings (a typo would crash-loop every member).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "(has(self.electionTimeoutMs) ? self.electionTimeoutMs : 1000) >= 5 * (has(self.heartbeatIntervalMs) ? self.heartbeatIntervalMs : 100)"
).message("electionTimeoutMs must be at least 5 times heartbeatIntervalMs (defaults 1000 and 100)"))]
#[x_kube(validation = Rule::new(
    "!has(self.autoCompactionMode) || self.autoCompactionMode != 'Revision' || !has(self.autoCompactionRetention) || self.autoCompactionRetention.matches('^[0-9]+$')"
).message("with autoCompactionMode Revision, autoCompactionRetention is a number of revisions"))]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// `--heartbeat-interval`: milliseconds between leader heartbeats (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: Option<u32>,
    /// `--election-timeout`: milliseconds a follower waits before it stands
    /// for election (default 1000); at least 5 heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 50000))]
    pub election_timeout_ms: Option<u32>,
    /// `--snapshot-count`: applied entries between raft snapshots (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<u64>,
    /// `--max-request-bytes`: largest client request (default 1572864, 1.5 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 2147483647))]
    pub max_request_bytes: Option<u32>,
    /// `--max-txn-ops`: most operations in one transaction (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_txn_ops: Option<u32>,
    /// `--auto-compaction-mode` (default periodic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_mode: Option<AutoCompactionMode>,
    /// `--auto-compaction-retention`: Periodic, hours (`"1"`) or a duration
    /// (`"30m"`); Revision, a count. `"0"` (the default) is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^([0-9]+|([0-9]+(ns|us|ms|s|m|h))+)$"))]
    pub auto_compaction_retention: Option<String>,
    /// `--experimental-watch-progress-notify-interval`: how often watchers
    /// that asked for progress notifications get one (default `10m`;
    /// kube-apiserver asks for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    pub watch_progress_notify_interval: Option<String>,
    /// `--log-level` (default info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
}

/// What `--auto-compaction-retention` counts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AutoCompactionMode {
    /// Keep the retention period's history.
    Periodic,
    /// Keep that many revisions.
    Revision,
}

/// kvd's log level.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl ServerSpec {
    /// The kvd flags these settings ask for, in a fixed order.
    pub fn flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                f.push(format!("--{flag}={v}"));
            }
        };
        push("heartbeat-interval", self.heartbeat_interval_ms.map(|v| v.to_string()));
        push("election-timeout", self.election_timeout_ms.map(|v| v.to_string()));
        push("snapshot-count", self.snapshot_count.map(|v| v.to_string()));
        push("max-request-bytes", self.max_request_bytes.map(|v| v.to_string()));
        push("max-txn-ops", self.max_txn_ops.map(|v| v.to_string()));
        push(
            "auto-compaction-mode",
            self.auto_compaction_mode.map(|m| match m {
                AutoCompactionMode::Periodic => "periodic".into(),
                AutoCompactionMode::Revision => "revision".into(),
            }),
        );
        push("auto-compaction-retention", self.auto_compaction_retention.clone());
        push("experimental-watch-progress-notify-interval", self.watch_progress_notify_interval.clone());
        push("log-level", self.log_level.map(|l| format!("{l:?}").to_lowercase()));
        f
    }
}

/// etcd authentication, turned on or off by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// On: once every member is healthy, the operator creates the user
    /// `root` (its password in the Secret `<name>-root`, keys `username`
    /// and `password`), users without a password for the common names of
    /// the client certificates it and the Jobs present (`kvd-operator` and
    /// `kvd-client` in TLS mode Operator), each with the role `root`, and
    /// then turns authentication on. Off: it turns it off. Needs client TLS:
    /// the operator and the Jobs authenticate by certificate.
    pub enabled: bool,
}

/// Which Prometheus Operator object to create, if any.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum MonitorKind {
    #[default]
    None,
    PodMonitor,
    ServiceMonitor,
}

/// Metrics scraping.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    #[serde(default)]
    pub monitor: MonitorKind,
}

/// Observed state, written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The cluster has had a leader at least once (quorum loss is only
    /// reported after that; before it the cluster is still forming).
    #[serde(default)]
    pub formed: bool,
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Since when the cluster has had no quorum, as first seen by the
    /// operator (`quorumLossRecovery` waits `failedMemberTimeoutSeconds` from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_lost_since: Option<Time>,
    /// While quorum is lost: the highest raft index a voter has reported
    /// since `quorumLostSince`. `quorumLossRecovery` never forces a member
    /// behind it (that member may only be slow to answer), unless that
    /// member's claim has since been replaced: its data is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_loss_best_index: Option<RaftIndexRecord>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_compaction: Option<CompactionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_defrag: Option<DefragRecord>,
    /// The newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// The newest failed backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_failure: Option<BackupFailure>,
    /// The last `kvd.io/backup-now` token acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_request: Option<String>,
    /// The backup this cluster was created from, once checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<BackupRecord>,
    /// Whether etcd authentication is on, as the members say (with `spec.auth` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_enabled: Option<bool>,
    /// The TLS mode the cluster runs with, recorded when it is first
    /// reconciled (it cannot change afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// The API server refused to expand a claim to `spec.storage.size`
    /// (tried again after 5 minutes, or at once for another size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_expansion_refused: Option<ExpansionRefusal>,
}

/// A refused claim expansion.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpansionRefusal {
    /// The size asked for.
    pub size: String,
    /// The claim refused.
    pub claim: String,
    /// The API server's message.
    pub message: String,
    pub time: Time,
}

/// TLS as the cluster runs it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    pub mode: TlsMode,
    /// Clients use https.
    #[serde(default)]
    pub client_tls: bool,
    /// Peers use https.
    #[serde(default)]
    pub peer_tls: bool,
    /// Mode Operator: when the first of the issued certificates expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
}

/// A backup: where it is, what it holds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// Object key.
    pub key: String,
    pub revision: i64,
    /// Bytes of snapshot.
    pub size: i64,
    /// SHA-256 of the snapshot (its trailer), hex.
    pub sha256: String,
    /// The member it was read from (empty for a restore check).
    #[serde(default)]
    pub member: String,
    pub time: Time,
}

/// A failed backup Job.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct BackupFailure {
    pub job: String,
    pub time: Time,
    /// The end of its log (the error kvctl printed).
    pub message: String,
}

/// One member as the cluster reports it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    /// Member id in hex.
    pub id: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    #[serde(rename = "clientURL")]
    pub client_url: String,
    pub is_learner: bool,
    pub healthy: bool,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub revision: i64,
    #[serde(default)]
    pub alarms: Vec<String>,
}

/// A member's raft index, and which volume held it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftIndexRecord {
    pub member: String,
    pub raft_index: u64,
    /// When the member's claim was created, as seen with the index: a claim
    /// created at another time (or none) no longer holds that log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_created: Option<Time>,
}

/// The last compaction: by the compaction CronJob or the NOSPACE remediation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CompactionRecord {
    pub revision: i64,
    pub time: Time,
}

/// The last defragmentation: by the defrag CronJob (`member` lists the members
/// defragmented, comma-separated, empty if all were under `freeThreshold`;
/// `bytesFreed` is their total) or by the NOSPACE remediation (one member).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefragRecord {
    pub member: String,
    pub time: Time,
    pub bytes_freed: i64,
}

impl KvClusterSpec {
    /// The member image.
    pub fn image(&self) -> String {
        match (&self.image, &self.version) {
            (Some(image), _) => image.clone(),
            (None, Some(v)) => format!("{DEFAULT_IMAGE_REPO}:{v}"),
            (None, None) => format!("{DEFAULT_IMAGE_REPO}:{DEFAULT_VERSION}"),
        }
    }

    /// The client TLS secret named in the spec.
    fn client_secret(&self) -> Option<&str> {
        self.tls.as_ref()?.client_secret_name.as_deref().filter(|s| !s.is_empty())
    }

    /// The peer TLS secret named in the spec.
    fn peer_secret(&self) -> Option<&str> {
        self.tls.as_ref()?.peer_secret_name.as_deref().filter(|s| !s.is_empty())
    }

    /// The effective backend quota in bytes.
    pub fn quota_bytes(&self) -> i64 {
        match self.quota_backend_bytes {
            Some(q) if q != 0 => q,
            _ => DEFAULT_QUOTA_BYTES,
        }
    }
}

/// Which Secret each side of the cluster's TLS uses (None: plain text).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsLayout {
    /// Served on the client port; its `ca.crt` verifies clients.
    pub server: Option<String>,
    /// Presented both ways on the peer port.
    pub peer: Option<String>,
    /// Presented by the operator to the members.
    pub operator: Option<String>,
    /// Presented by the maintenance, backup and restore Jobs.
    pub jobs: Option<String>,
}

impl TlsLayout {
    /// Whether clients must use https.
    pub fn client_tls(&self) -> bool {
        self.server.is_some()
    }

    /// Whether peers use https.
    pub fn peer_tls(&self) -> bool {
        self.peer.is_some()
    }
}

impl KvCluster {
    /// The TLS mode: the spec's; else `Secrets` when a secret is named,
    /// `CertManager` when an issuer is; else the mode recorded in status; else `Disabled` for a cluster that
    /// formed before the mode was recorded (an older operator's, plain
    /// text), and `Operator` for a new one.
    pub fn tls_mode(&self) -> TlsMode {
        if let Some(m) = self.spec.tls.as_ref().and_then(|t| t.mode) {
            return m;
        }
        if self.spec.client_secret().is_some() || self.spec.peer_secret().is_some() {
            return TlsMode::Secrets;
        }
        if self.spec.tls.as_ref().is_some_and(|t| t.cert_manager.is_some()) {
            return TlsMode::CertManager;
        }
        self.recorded_tls().map(|t| t.mode).unwrap_or(TlsMode::Operator)
    }

    /// The TLS the cluster formed with: as recorded in status, or, for a
    /// cluster that formed before it was recorded, what the operator of
    /// that time made of the spec: the Secrets named (mode Secrets), else
    /// plain text.
    pub fn recorded_tls(&self) -> Option<TlsStatus> {
        let st = self.status.as_ref()?;
        match &st.tls {
            Some(t) => Some(t.clone()),
            None if st.formed => {
                let (client_tls, peer_tls) = (self.spec.client_secret().is_some(), self.spec.peer_secret().is_some());
                let mode = if client_tls || peer_tls { TlsMode::Secrets } else { TlsMode::Disabled };
                Some(TlsStatus { mode, client_tls, peer_tls, not_after: None })
            }
            None => None,
        }
    }

    /// Why the spec's TLS cannot be applied, if it cannot: a formed
    /// cluster's members advertise their URLs with the scheme they formed
    /// with, so TLS cannot be turned on or off for clients or peers.
    pub fn tls_conflict(&self) -> Option<String> {
        let rec = self.recorded_tls().filter(|_| self.status.as_ref().is_some_and(|s| s.formed))?;
        let want = self.tls();
        let on = |b: bool| if b { "on" } else { "off" };
        ((rec.client_tls, rec.peer_tls) != (want.client_tls(), want.peer_tls())).then(|| {
            format!(
                "the cluster formed with client TLS {} and peer TLS {} (mode {:?}); the spec asks for client TLS {} \
                 and peer TLS {}, which a formed cluster cannot change: set spec.tls back, or move the data into \
                 a new KvCluster through a backup (spec.bootstrap.fromBackup)",
                on(rec.client_tls),
                on(rec.peer_tls),
                rec.mode,
                on(want.client_tls()),
                on(want.peer_tls())
            )
        })
    }

    /// The Secrets of the cluster's TLS.
    pub fn tls(&self) -> TlsLayout {
        let name = kube::ResourceExt::name_any(self);
        match self.tls_mode() {
            TlsMode::Disabled => TlsLayout::default(),
            TlsMode::Secrets => {
                let client = self.spec.client_secret().map(str::to_string);
                TlsLayout {
                    server: client.clone(),
                    peer: self.spec.peer_secret().map(str::to_string),
                    operator: client.clone(),
                    jobs: client,
                }
            }
            TlsMode::Operator | TlsMode::CertManager => TlsLayout {
                server: Some(crate::naming::server_tls_secret(&name)),
                peer: Some(crate::naming::peer_tls_secret(&name)),
                operator: Some(crate::naming::operator_tls_secret(&name)),
                jobs: Some(crate::naming::client_tls_secret(&name)),
            },
        }
    }
}

/// The CRD as YAML, as committed in `crds/kvcluster.yaml`, with every
/// mapping's keys sorted: the same text whether or not serde_json keeps
/// insertion order (its `preserve_order` feature, which another crate of
/// the workspace may turn on in a shared build).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let crd = <KvCluster as kube::CustomResourceExt>::crd();
    let value = serde_json::to_value(&crd).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    serde_yaml::to_string(&sorted(value))
}

/// `v` with the keys of every object in sorted order.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;
