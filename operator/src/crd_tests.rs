//! Tests of the CRD: the committed YAML is current, CEL rules, scale
//! subresource and columns are there, and the spec's defaults.

use super::*;

#[test]
fn committed_crd_matches_generated() {
    let committed = include_str!("../../crds/kvcluster.yaml");
    let generated = crd_yaml().expect("yaml");
    assert!(
        committed == generated,
        "crds/kvcluster.yaml is stale: cargo run -p kvd-operator --bin kvd-operator -- crd > crds/kvcluster.yaml"
    );
}

#[test]
fn crd_has_rules_scale_and_columns() {
    let y = crd_yaml().expect("yaml");
    for needle in [
        "self == oldSelf",
        "storage size can grow but not shrink",
        "quantity(self).compareTo(quantity(oldSelf)) >= 0",
        "has(self.storageClassName) == has(oldSelf.storageClassName)",
        "self.replicas % 2 == 1",
        "specReplicasPath: .spec.replicas",
        "labelSelectorPath: .status.selector",
        "shortNames:\n    - kvc",
        "jsonPath: .status.leader",
    ] {
        assert!(y.contains(needle), "missing {needle:?}");
    }
}

#[test]
fn image_and_quota_defaults() {
    let spec: KvClusterSpec = serde_json::from_str(r#"{"replicas":3}"#).expect("spec");
    assert_eq!(spec.image(), format!("ghcr.io/kvd-io/kvd:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(spec.quota_bytes(), 2 << 30);
    assert!(spec.alarms.auto_remediate);
    assert_eq!(spec.storage.size, "8Gi");
    let spec: KvClusterSpec =
        serde_json::from_str(r#"{"replicas":3,"version":"0.2.0","quotaBackendBytes":1024}"#).expect("spec");
    assert_eq!(spec.image(), "ghcr.io/kvd-io/kvd:0.2.0");
    assert_eq!(spec.quota_bytes(), 1024);
}

/// `kvcluster_default_tls` with `status` set from JSON.
fn with_status(status: serde_json::Value) -> KvCluster {
    let mut kc = crate::fixtures::kvcluster_default_tls("demo", 3);
    kc.status = Some(serde_json::from_value(status).expect("status"));
    kc
}

#[test]
fn tls_defaults_to_operator_issued_for_a_new_cluster_only() {
    // New: the operator's certificates, mutual TLS both ways.
    let kc = crate::fixtures::kvcluster_default_tls("demo", 3);
    assert_eq!(kc.tls_mode(), TlsMode::Operator);
    let t = kc.tls();
    assert_eq!(
        t,
        TlsLayout {
            server: Some("demo-server-tls".into()),
            peer: Some("demo-peer-tls".into()),
            operator: Some("demo-operator-tls".into()),
            jobs: Some("demo-client-tls".into()),
        }
    );
    // Recorded at the first reconcile, before it forms: kept.
    let kc = with_status(
        serde_json::json!({"formed": true, "tls": {"mode": "Operator", "clientTls": true, "peerTls": true}}),
    );
    assert_eq!(kc.tls_mode(), TlsMode::Operator);
    assert_eq!(kc.tls_conflict(), None);
    // Formed under an operator that recorded nothing (plain text then): stays plain text.
    let kc = with_status(serde_json::json!({"formed": true}));
    assert_eq!(kc.tls_mode(), TlsMode::Disabled);
    assert_eq!(kc.tls(), TlsLayout::default());
    assert_eq!(kc.tls_conflict(), None);
    // Not formed yet and nothing recorded: still a new cluster.
    assert_eq!(with_status(serde_json::json!({"formed": false})).tls_mode(), TlsMode::Operator);
    // Secrets named: mode Secrets, the client secret on every client side.
    let mut kc = crate::fixtures::kvcluster_default_tls("demo", 3);
    kc.spec.tls = Some(TlsSpec { client_secret_name: Some("c".into()), ..Default::default() });
    assert_eq!(kc.tls_mode(), TlsMode::Secrets);
    assert_eq!(
        kc.tls(),
        TlsLayout { server: Some("c".into()), peer: None, operator: Some("c".into()), jobs: Some("c".into()) }
    );
}

#[test]
fn a_formed_cluster_cannot_turn_tls_on_or_off() {
    // A plain-text cluster of an older operator asked for TLS.
    let mut kc = with_status(serde_json::json!({"formed": true}));
    kc.spec.tls = Some(TlsSpec { mode: Some(TlsMode::Operator), ..Default::default() });
    let why = kc.tls_conflict().expect("conflict");
    assert!(why.contains("client TLS off and peer TLS off") && why.contains("asks for client TLS on"), "{why}");
    // An operator-issued cluster asked for plain text, or for peer TLS only.
    let mut kc = with_status(
        serde_json::json!({"formed": true, "tls": {"mode": "Operator", "clientTls": true, "peerTls": true}}),
    );
    kc.spec.tls = Some(TlsSpec { mode: Some(TlsMode::Disabled), ..Default::default() });
    assert!(kc.tls_conflict().is_some());
    kc.spec.tls = Some(TlsSpec { peer_secret_name: Some("p".into()), ..Default::default() });
    assert!(kc.tls_conflict().is_some());
    // Moving from the operator's certificates to one's own, both ways TLS: allowed.
    kc.spec.tls = Some(TlsSpec {
        client_secret_name: Some("c".into()),
        peer_secret_name: Some("p".into()),
        ..Default::default()
    });
    assert_eq!(kc.tls_conflict(), None);
    // A cluster an older operator formed with its own Secrets (no
    // status.tls yet): it runs on them, no conflict (the first reconcile
    // records them).
    let mut kc = with_status(serde_json::json!({"formed": true}));
    kc.spec.tls = Some(TlsSpec {
        client_secret_name: Some("c".into()),
        peer_secret_name: Some("p".into()),
        ..Default::default()
    });
    assert_eq!(kc.tls_conflict(), None);
    assert_eq!(kc.tls_mode(), TlsMode::Secrets);
    let rec = kc.recorded_tls().expect("recorded");
    assert_eq!((rec.mode, rec.client_tls, rec.peer_tls), (TlsMode::Secrets, true, true));
    // Before the cluster forms, anything goes.
    let mut kc = with_status(
        serde_json::json!({"formed": false, "tls": {"mode": "Operator", "clientTls": true, "peerTls": true}}),
    );
    kc.spec.tls = Some(TlsSpec { mode: Some(TlsMode::Disabled), ..Default::default() });
    assert_eq!(kc.tls_conflict(), None);
}

#[test]
fn tls_rules_are_in_the_crd() {
    let y = crd_yaml().expect("yaml");
    assert!(y.contains("clientSecretName and peerSecretName are for mode Secrets"));
    assert!(y.contains("mode Secrets needs clientSecretName or peerSecretName"));
}

/// `spec.server` becomes kvd flags in a fixed order, only those set; the
/// CRD bounds the election timeout by the heartbeat.
#[test]
fn server_settings_become_flags() {
    let spec: KvClusterSpec = serde_json::from_value(serde_json::json!({
        "replicas": 3,
        "server": { "logLevel": "Warn", "heartbeatIntervalMs": 150, "electionTimeoutMs": 1500,
                    "autoCompactionMode": "Revision", "autoCompactionRetention": "1000" }
    }))
    .expect("spec");
    assert_eq!(
        spec.server.expect("server").flags(),
        [
            "--heartbeat-interval=150",
            "--election-timeout=1500",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--log-level=warn"
        ]
    );
    assert!(ServerSpec::default().flags().is_empty());
    let y = crd_yaml().expect("yaml");
    assert!(y.contains("electionTimeoutMs must be at least 5 times heartbeatIntervalMs"), "no timeout rule");
    let bad =
        serde_json::from_value::<KvClusterSpec>(serde_json::json!({ "replicas": 3, "server": { "logLevel": "loud" } }));
    assert!(bad.is_err(), "an unknown log level parsed");
}

/// `certManager` implies mode CertManager, with the Secret layout of mode Operator.
#[test]
fn cert_manager_issuer_implies_its_mode() {
    let mut kc = KvCluster::new(
        "demo",
        serde_json::from_value(serde_json::json!({
            "replicas": 3, "tls": { "certManager": { "issuerRef": { "name": "ca" } } }
        }))
        .expect("spec"),
    );
    kc.metadata.namespace = Some("ns".into());
    assert_eq!(kc.tls_mode(), TlsMode::CertManager);
    let issuer = &kc.spec.tls.as_ref().and_then(|t| t.cert_manager.as_ref()).expect("certManager").issuer_ref;
    assert_eq!((issuer.kind.as_str(), issuer.group.as_str()), ("Issuer", "cert-manager.io"));
    let layout = kc.tls();
    assert_eq!(layout.server.as_deref(), Some("demo-server-tls"));
    assert_eq!(layout.operator.as_deref(), Some("demo-operator-tls"));
    assert_eq!(layout.jobs.as_deref(), Some("demo-client-tls"));
    let y = crd_yaml().expect("yaml");
    assert!(y.contains("mode CertManager needs certManager.issuerRef"));
    assert!(y.contains("certManager and clientSecretName or peerSecretName exclude each other"));
}
