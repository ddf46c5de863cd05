//! The ConfigMap the members read `--initial-cluster` and
//! `--initial-cluster-state` from (through env vars, so updating it never
//! restarts running pods; a member only reads it when its data dir is empty).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::meta;
use crate::crd::KvCluster;
use crate::naming;

/// Key holding `name=peerURL,...`.
pub const INITIAL_CLUSTER: &str = "initial-cluster";
/// Key holding `new` or `existing`.
pub const INITIAL_CLUSTER_STATE: &str = "initial-cluster-state";

/// ConfigMap for the given member ordinals; `new` only while bootstrapping.
pub fn config_map(kc: &KvCluster, ordinals: &[u32], new: bool) -> ConfigMap {
    let name = kc.name_any();
    let ns = kc.namespace().unwrap_or_default();
    ConfigMap {
        metadata: meta(kc, naming::config_map(&name)),
        data: Some(BTreeMap::from([
            (INITIAL_CLUSTER.to_string(), naming::initial_cluster(&name, &ns, ordinals.iter().copied())),
            (INITIAL_CLUSTER_STATE.to_string(), if new { "new" } else { "existing" }.to_string()),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn bootstrap_then_existing() {
        let kc = kvcluster("demo", 3);
        let cm = config_map(&kc, &[0, 1, 2], true);
        let data = cm.data.expect("data");
        assert_eq!(data[INITIAL_CLUSTER_STATE], "new");
        assert_eq!(data[INITIAL_CLUSTER].matches("=http://").count(), 3);
        let cm = config_map(&kc, &[0, 1, 2, 3], false);
        let data = cm.data.expect("data");
        assert_eq!(data[INITIAL_CLUSTER_STATE], "existing");
        assert!(data[INITIAL_CLUSTER].ends_with("demo-3=http://demo-3.demo-peer.ns.svc:2380"));
    }
}
