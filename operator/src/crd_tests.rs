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
        "storage size is immutable",
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
    assert_eq!(spec.image(), "ghcr.io/kvd-io/kvd:latest");
    assert_eq!(spec.quota_bytes(), 2 << 30);
    assert!(spec.alarms.auto_remediate);
    assert_eq!(spec.storage.size, "8Gi");
    let spec: KvClusterSpec =
        serde_json::from_str(r#"{"replicas":3,"version":"0.2.0","quotaBackendBytes":1024}"#).expect("spec");
    assert_eq!(spec.image(), "ghcr.io/kvd-io/kvd:0.2.0");
    assert_eq!(spec.quota_bytes(), 1024);
}
