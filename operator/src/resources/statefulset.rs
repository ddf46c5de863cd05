//! The StatefulSet of members: Parallel pod management (all initial members
//! must start together to form a quorum), OnDelete updates (the operator
//! restarts pods one at a time, leader last), claim templates with the spec's
//! retention, probes on `/readyz` and `/livez` (and a startup probe of 10
//! minutes), etcd-style flags, the image's non-root user with `fsGroup` on
//! the data volume, default resource requests, and members spread over
//! nodes and zones.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{FORCE_MEMBER, INITIAL_CLUSTER, INITIAL_CLUSTER_STATE, TEMPLATE_HASH, meta, template_hash};
use crate::crd::{AntiAffinity, KvCluster, Retention};
use crate::naming::{self, CLIENT_PORT, CLIENT_TLS_DIR, DATA_DIR, MEMBER_UID, METRICS_PORT, PEER_PORT, PEER_TLS_DIR};

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
            port: IntOrString::Int(METRICS_PORT),
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
/// The members' and the kvctl Jobs' pod security: non-root as the image's
/// user, which owns the volumes through `fsGroup`; the runtime's seccomp.
pub(super) fn pod_security() -> PodSecurityContext {
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

/// Every container's: no privilege, no capability, and a read-only root
/// filesystem (kvd and kvctl write only under their mounted volumes).
pub(super) fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    }
}

/// kvd's command line; `$(VAR)` is expanded by the kubelet from `env`.
/// Probes and scrapers use the plain-HTTP metrics listener, which also
/// serves when client traffic requires certificates.
fn args(kc: &KvCluster) -> Vec<String> {
    let name = kc.name_any();
    let ns = kc.namespace().unwrap_or_default();
    let host = format!("$(POD_NAME).{}.{ns}.svc", naming::peer_service(&name));
    let tls = kc.tls();
    let (client, peer) = (naming::scheme(tls.client_tls()), naming::scheme(tls.peer_tls()));
    let mut args = vec![
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}"),
        format!("--listen-client-urls={client}://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls={client}://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls={peer}://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls={peer}://{host}:{PEER_PORT}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
        "--initial-cluster=$(INITIAL_CLUSTER)".into(),
        "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)".into(),
        format!("--initial-cluster-token={ns}-{name}"),
        format!("--quota-backend-bytes={}", kc.spec.quota_bytes()),
    ];
    if tls.client_tls() {
        args.extend([
            format!("--cert-file={CLIENT_TLS_DIR}/tls.crt"),
            format!("--key-file={CLIENT_TLS_DIR}/tls.key"),
            format!("--trusted-ca-file={CLIENT_TLS_DIR}/ca.crt"),
            "--client-cert-auth=true".into(),
        ]);
    }
    if tls.peer_tls() {
        args.extend([
            format!("--peer-cert-file={PEER_TLS_DIR}/tls.crt"),
            format!("--peer-key-file={PEER_TLS_DIR}/tls.key"),
            format!("--peer-trusted-ca-file={PEER_TLS_DIR}/ca.crt"),
            "--peer-client-cert-auth=true".into(),
        ]);
    }
    args.extend(kc.spec.server.as_ref().map(|s| s.flags()).unwrap_or_default());
    args
}

/// A read-only secret volume and its mount.
pub fn secret_volume(name: &str, secret: &str, dir: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource { secret_name: Some(secret.to_string()), ..SecretVolumeSource::default() }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: name.to_string(),
        mount_path: dir.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The TLS secrets' volumes and mounts.
fn tls_volumes(kc: &KvCluster) -> (Vec<Volume>, Vec<VolumeMount>) {
    let tls = kc.tls();
    let client = tls.server.map(|s| secret_volume("client-tls", &s, CLIENT_TLS_DIR));
    let peer = tls.peer.map(|s| secret_volume("peer-tls", &s, PEER_TLS_DIR));
    client.into_iter().chain(peer).unzip()
}

/// The member pod template (also the input of the template hash).
pub fn pod_template(kc: &KvCluster) -> PodTemplateSpec {
    let name = kc.name_any();
    let o = &kc.spec.pod_template;
    let mut labels = o.labels.clone();
    labels.extend(naming::selector_labels(&name));
    let cm = naming::config_map(&name);
    let (tls_volumes, tls_mounts) = tls_volumes(kc);
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
            ContainerPort { name: Some("metrics".into()), container_port: METRICS_PORT, ..ContainerPort::default() },
        ]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/livez", 15)),
        // A member replaying a long WAL or installing a large snapshot at
        // start is given 10 minutes before liveness may restart it.
        // Probed every 2 s, so a member that starts at once is ready at once.
        startup_probe: Some(Probe { failure_threshold: Some(300), period_seconds: Some(2), ..probe("/livez", 0) }),
        resources: Some(kc.spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(container_security()),
        volume_mounts: Some(
            [VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() }]
                .into_iter()
                .chain(tls_mounts)
                .collect(),
        ),
        ..Container::default()
    };
    // A cluster created from a backup: each initial member restores it first.
    let mut volumes = tls_volumes;
    let init = container.env.as_deref().and_then(|env| super::restore_init_container(kc, env)).map(|(c, v)| {
        volumes.extend(v);
        vec![c]
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!o.annotations.is_empty()).then(|| o.annotations.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: init,
            containers: vec![container],
            affinity: o.affinity.clone().or_else(|| anti_affinity(&name, o.anti_affinity)),
            topology_spread_constraints: (o.affinity.is_none() && o.anti_affinity != AntiAffinity::None)
                .then(|| vec![zone_spread(&name)]),
            image_pull_secrets: (!o.image_pull_secrets.is_empty()).then(|| o.image_pull_secrets.clone()),
            service_account_name: o.service_account_name.clone(),
            tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
            node_selector: (!o.node_selector.is_empty()).then(|| o.node_selector.clone()),
            priority_class_name: o.priority_class_name.clone(),
            security_context: Some(pod_security()),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
    }
}

/// Requests when the spec gives no resources: what a small member needs
/// (an idle kvd holds about 30 MB; under load a few hundred).
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [("cpu".to_string(), Quantity("250m".into())), ("memory".to_string(), Quantity("512Mi".into()))].into(),
        ),
        ..ResourceRequirements::default()
    }
}

/// One member per node: preferred, or required.
fn anti_affinity(cluster: &str, how: AntiAffinity) -> Option<Affinity> {
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(naming::selector_labels(cluster)),
            ..LabelSelector::default()
        }),
        topology_key: "kubernetes.io/hostname".into(),
        ..PodAffinityTerm::default()
    };
    let anti = match how {
        AntiAffinity::None => return None,
        AntiAffinity::Preferred => PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: term,
            }]),
            ..PodAntiAffinity::default()
        },
        AntiAffinity::Required => PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        },
    };
    Some(Affinity { pod_anti_affinity: Some(anti), ..Affinity::default() })
}

/// An even spread over zones, as a preference.
fn zone_spread(cluster: &str) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(naming::selector_labels(cluster)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }
}

fn retention(r: Retention) -> String {
    match r {
        Retention::Retain => "Retain".into(),
        Retention::Delete => "Delete".into(),
    }
}

/// StatefulSet with `replicas` pods, whose claim template asks for
/// `claim_size`: an existing StatefulSet's own (a claim template cannot
/// change; a grown `spec.storage.size` expands the claims instead,
/// `volumes.rs`), or, for a new one (None), the spec's.
pub fn statefulset(kc: &KvCluster, replicas: u32, claim_size: Option<&str>) -> StatefulSet {
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
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(claim_size.unwrap_or(&storage.size).to_string()),
                )])),
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
    use k8s_openapi::api::core::v1::LocalObjectReference;

    /// A new StatefulSet's claims ask for the spec's size; an existing one
    /// keeps its template's (the API server refuses a changed template).
    #[test]
    fn claim_template_keeps_the_size_it_was_made_with() {
        let mut kc = kvcluster("demo", 3);
        kc.spec.storage.size = "2Gi".into();
        let size = |sts: StatefulSet| {
            let t = sts.spec.volume_claim_templates.expect("templates");
            t[0].spec.as_ref().and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned())
        };
        assert_eq!(size(statefulset(&kc, 3, None)), Some(Quantity("2Gi".into())));
        assert_eq!(size(statefulset(&kc, 3, Some("1Gi"))), Some(Quantity("1Gi".into())));
    }

    /// `spec.server`'s flags follow the operator's own, so they change the template hash.
    #[test]
    fn server_flags_reach_the_members() {
        let mut kc = kvcluster("demo", 3);
        let before = template_hash(&kc);
        kc.spec.server = Some(crate::crd::ServerSpec { snapshot_count: Some(500), ..Default::default() });
        let args = args(&kc);
        assert_eq!(args.last().map(String::as_str), Some("--snapshot-count=500"), "{args:?}");
        assert_ne!(template_hash(&kc), before);
    }

    #[test]
    fn statefulset_shape() {
        let mut kc = kvcluster("demo", 3);
        kc.spec.storage.when_scaled = Retention::Delete;
        kc.spec.pod_template.priority_class_name = Some("critical".into());
        let sts = statefulset(&kc, 4, None);
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
        // Probes use the plain-HTTP metrics listener (kubelet presents no client certificate).
        assert_eq!((ready.path.as_deref(), &ready.port), (Some("/readyz"), &IntOrString::Int(2381)));
        assert!(args.contains("--listen-metrics-urls=http://0.0.0.0:2381"), "{args}");
        assert!(!args.contains("https") && !args.contains("cert-file"), "{args}");
        assert!(pod.volumes.is_none());
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

    #[test]
    fn tls_secrets_become_https_urls_flags_and_mounts() {
        let mut kc = kvcluster("demo", 3);
        kc.spec.tls = Some(crate::crd::TlsSpec {
            client_secret_name: Some("client-certs".into()),
            peer_secret_name: Some("peer-certs".into()),
            ..Default::default()
        });
        let pod = pod_template(&kc).spec.expect("pod");
        let c = &pod.containers[0];
        let args = c.args.clone().expect("args");
        for want in [
            "--listen-client-urls=https://0.0.0.0:2379",
            "--advertise-client-urls=https://$(POD_NAME).demo-peer.ns.svc:2379",
            "--listen-peer-urls=https://0.0.0.0:2380",
            "--initial-advertise-peer-urls=https://$(POD_NAME).demo-peer.ns.svc:2380",
            "--cert-file=/etc/kvd/tls/client/tls.crt",
            "--key-file=/etc/kvd/tls/client/tls.key",
            "--trusted-ca-file=/etc/kvd/tls/client/ca.crt",
            "--client-cert-auth=true",
            "--peer-cert-file=/etc/kvd/tls/peer/tls.crt",
            "--peer-key-file=/etc/kvd/tls/peer/tls.key",
            "--peer-trusted-ca-file=/etc/kvd/tls/peer/ca.crt",
            "--peer-client-cert-auth=true",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
        let volumes = pod.volumes.expect("volumes");
        let secrets: Vec<_> =
            volumes.iter().map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()).expect("secret")).collect();
        assert_eq!(secrets, ["client-certs", "peer-certs"]);
        let mounts = c.volume_mounts.as_ref().expect("mounts");
        let tls_mounts: Vec<_> =
            mounts.iter().filter(|m| m.read_only == Some(true)).map(|m| m.mount_path.as_str()).collect();
        assert_eq!(tls_mounts, ["/etc/kvd/tls/client", "/etc/kvd/tls/peer"]);
        // Peer TLS alone: clients stay on http.
        kc.spec.tls = Some(crate::crd::TlsSpec { peer_secret_name: Some("p".into()), ..Default::default() });
        let args = pod_template(&kc).spec.expect("pod").containers[0].args.clone().expect("args").join(" ");
        assert!(
            args.contains("--listen-client-urls=http://") && args.contains("--listen-peer-urls=https://"),
            "{args}"
        );
        assert_ne!(template_hash(&kc), template_hash(&kvcluster("demo", 3)), "TLS changes restart the members");
    }

    #[test]
    fn by_default_members_serve_the_operator_issued_certificates() {
        let kc = crate::fixtures::kvcluster_default_tls("demo", 3);
        let pod = pod_template(&kc).spec.expect("pod");
        let args = pod.containers[0].args.clone().expect("args").join(" ");
        for want in ["--listen-client-urls=https://", "--listen-peer-urls=https://", "--client-cert-auth=true"] {
            assert!(args.contains(want), "missing {want} in {args}");
        }
        let secrets: Vec<_> = pod
            .volumes
            .expect("volumes")
            .iter()
            .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
            .collect();
        assert_eq!(secrets, ["demo-server-tls", "demo-peer-tls"]);
        // The maintenance Jobs present the users' client certificate, not the operator's.
        let mut kc = kc;
        kc.spec.compaction = Some(crate::crd::CompactionSpec {
            schedule: "0 * * * *".into(),
            retention_revisions: None,
            retention_duration: None,
        });
        let cj = crate::resources::cronjob(&kc, crate::resources::Task::Compact).expect("cronjob");
        let job_pod = cj.spec.job_template.spec.expect("job").template.spec.expect("pod");
        let job_secrets: Vec<_> = job_pod
            .volumes
            .expect("volumes")
            .iter()
            .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
            .collect();
        assert_eq!(job_secrets, ["demo-client-tls"]);
        assert!(
            job_pod.containers[0].args.clone().expect("args").join(" ").contains("https://demo-client.ns.svc:2379")
        );
    }

    #[test]
    fn production_pod_defaults() {
        let mut kc = kvcluster("demo", 3);
        let pod = |kc: &KvCluster| pod_template(kc).spec.expect("pod");
        let p = pod(&kc);
        let c = &p.containers[0];
        let requests = c.resources.as_ref().and_then(|r| r.requests.clone()).expect("requests");
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("250m", "512Mi"));
        assert!(c.resources.as_ref().and_then(|r| r.limits.as_ref()).is_none(), "no limits by default");
        let startup = c.startup_probe.as_ref().expect("startup probe");
        assert_eq!(startup.failure_threshold.unwrap_or(0) * startup.period_seconds.unwrap_or(0), 600);
        // Preferred by default: one member per node, zones evened out.
        let anti = p.affinity.as_ref().and_then(|a| a.pod_anti_affinity.clone()).expect("anti-affinity");
        let term = &anti.preferred_during_scheduling_ignored_during_execution.expect("preferred")[0];
        assert_eq!(term.pod_affinity_term.topology_key, "kubernetes.io/hostname");
        let spread = &p.topology_spread_constraints.expect("spread")[0];
        assert_eq!(
            (spread.topology_key.as_str(), spread.when_unsatisfiable.as_str()),
            ("topology.kubernetes.io/zone", "ScheduleAnyway")
        );
        kc.spec.pod_template.anti_affinity = crate::crd::AntiAffinity::Required;
        let anti = pod(&kc).affinity.and_then(|a| a.pod_anti_affinity).expect("anti-affinity");
        assert!(anti.required_during_scheduling_ignored_during_execution.is_some());
        kc.spec.pod_template.anti_affinity = crate::crd::AntiAffinity::None;
        let p = pod(&kc);
        assert!(p.affinity.is_none() && p.topology_spread_constraints.is_none());
        // The user's affinity wins; pull secrets and the service account pass through.
        kc.spec.pod_template.anti_affinity = crate::crd::AntiAffinity::Required;
        kc.spec.pod_template.affinity = Some(Affinity::default());
        kc.spec.pod_template.image_pull_secrets = vec![LocalObjectReference { name: "regcred".into() }];
        kc.spec.pod_template.service_account_name = Some("kvd".into());
        let p = pod(&kc);
        assert_eq!(p.affinity, Some(Affinity::default()));
        assert!(p.topology_spread_constraints.is_none());
        assert_eq!(p.image_pull_secrets.expect("secrets")[0].name, "regcred");
        assert_eq!(p.service_account_name.as_deref(), Some("kvd"));
    }
}
