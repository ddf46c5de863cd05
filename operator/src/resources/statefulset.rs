//! The StatefulSet of members: Parallel pod management (all initial members
//! must start together to form a quorum), OnDelete updates (the operator
//! restarts pods one at a time, leader last), claim templates with the spec's
//! retention, probes on `/readyz` and `/livez`, etcd-style flags, and the
//! image's non-root user with `fsGroup` on the data volume.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{FORCE_MEMBER, INITIAL_CLUSTER, INITIAL_CLUSTER_STATE, TEMPLATE_HASH, meta, template_hash};
use crate::crd::{KvCluster, Retention};
use crate::naming::{self, CLIENT_PORT, DATA_DIR, MEMBER_UID, PEER_PORT};

/// kvd's environment variable for `--force-new-cluster-member`.
pub const FORCE_ENV: &str = "KVD_FORCE_NEW_CLUSTER_MEMBER";

/// An env var from `key` of ConfigMap `cm`; an `optional` key may be absent
/// (the variable is then unset).
fn env_from_config(name: &str, cm: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: cm.to_string(),
                key: key.to_string(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(CLIENT_PORT),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Members run as the image's non-root user; `fsGroup` makes the claim
/// mounted at the data directory writable by it (volumes start root-owned).
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(MEMBER_UID),
        run_as_group: Some(MEMBER_UID),
        fs_group: Some(MEMBER_UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        ..SecurityContext::default()
    }
}

/// kvd's command line; `$(VAR)` is expanded by the kubelet from `env`.
fn args(kc: &KvCluster) -> Vec<String> {
    let name = kc.name_any();
    let ns = kc.namespace().unwrap_or_default();
    let host = format!("$(POD_NAME).{}.{ns}.svc", naming::peer_service(&name));
    vec![
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}"),
        format!("--listen-client-urls=http://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls=http://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls=http://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{host}:{PEER_PORT}"),
        "--initial-cluster=$(INITIAL_CLUSTER)".into(),
        "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)".into(),
        format!("--initial-cluster-token={ns}-{name}"),
        format!("--quota-backend-bytes={}", kc.spec.quota_bytes()),
    ]
}

/// The member pod template (also the input of the template hash).
pub fn pod_template(kc: &KvCluster) -> PodTemplateSpec {
    let name = kc.name_any();
    let o = &kc.spec.pod_template;
    let mut labels = o.labels.clone();
    labels.extend(naming::selector_labels(&name));
    let cm = naming::config_map(&name);
    let container = Container {
        name: "kvd".into(),
        image: Some(kc.spec.image()),
        command: Some(vec!["kvd".into()]),
        args: Some(args(kc)),
        env: Some(vec![
            EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            env_from_config("INITIAL_CLUSTER", &cm, INITIAL_CLUSTER, false),
            env_from_config("INITIAL_CLUSTER_STATE", &cm, INITIAL_CLUSTER_STATE, false),
            // Set only while the operator recovers from a lost quorum; kvd
            // acts on it in the member it names, once per token.
            env_from_config(FORCE_ENV, &cm, FORCE_MEMBER, true),
        ]),
        ports: Some(vec![
            ContainerPort { name: Some("client".into()), container_port: CLIENT_PORT, ..ContainerPort::default() },
            ContainerPort { name: Some("peer".into()), container_port: PEER_PORT, ..ContainerPort::default() },
        ]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/livez", 15)),
        resources: kc.spec.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!o.annotations.is_empty()).then(|| o.annotations.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            affinity: o.affinity.clone(),
            tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
            node_selector: (!o.node_selector.is_empty()).then(|| o.node_selector.clone()),
            priority_class_name: o.priority_class_name.clone(),
            security_context: Some(pod_security()),
            ..PodSpec::default()
        }),
    }
}

fn retention(r: Retention) -> String {
    match r {
        Retention::Retain => "Retain".into(),
        Retention::Delete => "Delete".into(),
    }
}

/// StatefulSet with `replicas` pods.
pub fn statefulset(kc: &KvCluster, replicas: u32) -> StatefulSet {
    let name = kc.name_any();
    let storage = &kc.spec.storage;
    let mut metadata = meta(kc, naming::statefulset(&name));
    metadata.annotations = Some(BTreeMap::from([(TEMPLATE_HASH.to_string(), template_hash(kc))]));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(storage.size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(naming::peer_service(&name)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None }),
            selector: LabelSelector { match_labels: Some(naming::selector_labels(&name)), ..LabelSelector::default() },
            template: pod_template(kc),
            volume_claim_templates: Some(vec![claim]),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some(retention(storage.when_scaled)),
                when_deleted: Some(retention(storage.when_deleted)),
            }),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn statefulset_shape() {
        let mut kc = kvcluster("demo", 3);
        kc.spec.storage.when_scaled = Retention::Delete;
        kc.spec.pod_template.priority_class_name = Some("critical".into());
        let sts = statefulset(&kc, 4);
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("demo-peer"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let policy = spec.persistent_volume_claim_retention_policy.expect("policy");
        assert_eq!(policy.when_scaled.as_deref(), Some("Delete"));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
        let sc = pod.security_context.as_ref().expect("pod security context");
        assert_eq!((sc.run_as_user, sc.fs_group, sc.run_as_non_root), (Some(65532), Some(65532), Some(true)));
        let c = &pod.containers[0];
        let args = c.args.clone().expect("args").join(" ");
        assert!(args.contains("--initial-advertise-peer-urls=http://$(POD_NAME).demo-peer.ns.svc:2380"), "{args}");
        assert!(args.contains("--data-dir=/var/lib/kvd"));
        assert!(args.contains("--quota-backend-bytes=2147483648"));
        let ready = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("readiness");
        assert_eq!((ready.path.as_deref(), &ready.port), (Some("/readyz"), &IntOrString::Int(2379)));
        let live = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("liveness");
        assert_eq!(live.path.as_deref(), Some("/livez"));
        assert_eq!(sts.metadata.annotations.expect("annotations")[TEMPLATE_HASH], template_hash(&kc));
        let env = c.env.as_ref().expect("env");
        let cm_key = |name: &str| {
            let e = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no env {name}"));
            e.value_from.as_ref().and_then(|v| v.config_map_key_ref.clone()).expect("configMapKeyRef")
        };
        let force = cm_key(FORCE_ENV);
        assert_eq!(
            (force.name.as_str(), force.key.as_str(), force.optional),
            ("demo-config", FORCE_MEMBER, Some(true))
        );
        // The keys every member needs are not optional.
        assert_eq!(cm_key("INITIAL_CLUSTER").optional, None);
        assert_eq!(cm_key("INITIAL_CLUSTER_STATE").optional, None);
    }
}
