//! Pure builders for the objects a KvCluster owns: headless peer and client
//! Services, the ConfigMap with `initial-cluster`, the quorum-aware PDB, the
//! StatefulSet, the maintenance CronJobs, the backup and restore Jobs and
//! init container, the optional Prometheus Operator monitor, and the
//! cert-manager Certificates of TLS mode CertManager.

mod backup;
mod certificate;
mod configmap;
mod cronjob;
mod monitor;
mod pdb;
mod service;
mod statefulset;

pub use backup::{
    BACKUP_NOW, BACKUPS_DIR, RESTORE_CHECK, StoreIo, backup_name, backup_now_job, backup_now_name, restore_check_job,
    restore_init_container, store_io,
};
pub use certificate::{CERT_COMPONENT, certificate, certificate_api};
pub use configmap::{
    FORCE_MEMBER, FORCE_SINCE, ForceKey, INITIAL_CLUSTER, INITIAL_CLUSTER_STATE, config_map, force_key,
    recovery_config_map,
};
pub use cronjob::{SPEC_HASH, Task, cronjob};
pub use monitor::monitor;
pub use pdb::pdb;
pub use service::{SERVICE_ROLE, client_service, peer_service};
pub use statefulset::{FORCE_ENV, pod_template, statefulset};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::KvCluster;
use crate::naming;

/// Annotation on the StatefulSet carrying the hash of its pod template.
pub const TEMPLATE_HASH: &str = "kvd.io/template-hash";

/// Metadata of an owned object: name, namespace, labels and a controller owner reference.
pub fn meta(kc: &KvCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: kc.namespace(),
        labels: Some(naming::labels(&kc.name_any())),
        owner_references: owner_ref(kc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner_ref(kc: &KvCluster) -> Option<OwnerReference> {
    kc.controller_owner_ref(&())
}

/// Hash of what the StatefulSet carries besides its replicas: the pod
/// template's JSON and the claim retention policy (so a change of
/// `storage.whenScaled` or `whenDeleted` is applied at once, not at the next
/// resize; it restarts no pod, since pods follow the template's own
/// revision). Stable across builds and Rust versions.
pub fn template_hash(kc: &KvCluster) -> String {
    let mut bytes = serde_json::to_vec(&pod_template(kc)).unwrap_or_default();
    let s = &kc.spec.storage;
    bytes.extend_from_slice(format!("|{:?}|{:?}", s.when_scaled, s.when_deleted).as_bytes());
    fnv(&bytes)
}

/// FNV-1a of `bytes`, as 16 hex digits.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn hash_ignores_replicas_and_follows_the_image() {
        let a = kvcluster("demo", 3);
        let mut b = a.clone();
        b.spec.replicas = 5;
        assert_eq!(template_hash(&a), template_hash(&b));
        b.spec.version = Some("9.9.9".into());
        assert_ne!(template_hash(&a), template_hash(&b));
    }

    #[test]
    fn hash_changes_with_the_claim_retention() {
        let a = kvcluster("demo", 3);
        let mut b = a.clone();
        b.spec.storage.when_scaled = crate::crd::Retention::Delete;
        assert_ne!(template_hash(&a), template_hash(&b), "whenScaled");
        let mut c = a.clone();
        c.spec.storage.when_deleted = crate::crd::Retention::Delete;
        assert_ne!(template_hash(&a), template_hash(&c), "whenDeleted");
        assert_ne!(template_hash(&b), template_hash(&c));
    }

    #[test]
    fn owned_objects_point_at_the_cluster() {
        let kc = kvcluster("demo", 3);
        let m = meta(&kc, "x".into());
        let o = &m.owner_references.expect("owner")[0];
        assert_eq!((o.kind.as_str(), o.name.as_str(), o.controller), ("KvCluster", "demo", Some(true)));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
    }
}
