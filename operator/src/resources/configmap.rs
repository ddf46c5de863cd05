//! The ConfigMap the members read `--initial-cluster` and
//! `--initial-cluster-state` from (through env vars, so updating it never
//! restarts running pods; a member only reads it when its data dir is empty),
//! and, during a quorum-loss recovery only, kvd's `--force-new-cluster-member`
//! (an optional key: setting or clearing it changes no pod template) with the
//! time it was set.

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

/// `--force-new-cluster-member` (`NAME/TOKEN`), present only during a recovery.
pub const FORCE_MEMBER: &str = "force-new-cluster-member";
/// When `FORCE_MEMBER` was set (RFC 3339): pods and claims older than this
/// hold the data of the cluster as it was before the recovery.
pub const FORCE_SINCE: &str = "force-new-cluster-since";

/// The recovery keys: force `member` (a member name) with `token`, set at `since`.
#[derive(Clone, Debug, PartialEq)]
pub struct ForceKey {
    pub member: String,
    pub token: String,
    pub since: jiff::Timestamp,
}

/// `config_map` carrying the recovery keys of `force`. Every other apply of
/// the ConfigMap (same field manager) leaves them out, which removes them.
pub fn recovery_config_map(kc: &KvCluster, ordinals: &[u32], force: &ForceKey) -> ConfigMap {
    let mut cm = config_map(kc, ordinals, false);
    let data = cm.data.get_or_insert_with(BTreeMap::new);
    data.insert(FORCE_MEMBER.to_string(), format!("{}/{}", force.member, force.token));
    data.insert(FORCE_SINCE.to_string(), force.since.to_string());
    cm
}

/// The recovery keys of a ConfigMap's data, if both are there and parse.
pub fn force_key(data: &BTreeMap<String, String>) -> Option<ForceKey> {
    let (member, token) = data.get(FORCE_MEMBER)?.trim().split_once('/')?;
    let since = data.get(FORCE_SINCE)?.parse().ok()?;
    Some(ForceKey { member: member.to_string(), token: token.to_string(), since })
}

/// ConfigMap for the given member ordinals; `new` only while bootstrapping.
pub fn config_map(kc: &KvCluster, ordinals: &[u32], new: bool) -> ConfigMap {
    let name = kc.name_any();
    let ns = kc.namespace().unwrap_or_default();
    ConfigMap {
        metadata: meta(kc, naming::config_map(&name)),
        data: Some(BTreeMap::from([
            (
                INITIAL_CLUSTER.to_string(),
                naming::initial_cluster(&name, &ns, ordinals.iter().copied(), kc.tls().peer_tls()),
            ),
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
        assert_eq!(force_key(&data), None);
    }

    #[test]
    fn recovery_keys_round_trip() {
        let kc = kvcluster("demo", 3);
        let since: jiff::Timestamp = "2026-01-01T12:00:00Z".parse().expect("ts");
        let key = ForceKey { member: "demo-1".into(), token: "0000-1111-1767268800".into(), since };
        let data = recovery_config_map(&kc, &[0, 1, 2], &key).data.expect("data");
        assert_eq!(data[FORCE_MEMBER], "demo-1/0000-1111-1767268800");
        assert_eq!(data[INITIAL_CLUSTER_STATE], "existing");
        assert_eq!(force_key(&data), Some(key));
        let mut bad = data.clone();
        bad.insert(FORCE_SINCE.into(), "yesterday".into());
        assert_eq!(force_key(&bad), None, "an unreadable time");
        bad.remove(FORCE_SINCE);
        assert_eq!(force_key(&bad), None);
    }
}
