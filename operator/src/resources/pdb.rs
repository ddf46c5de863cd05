//! Quorum-aware PodDisruptionBudget: voluntary evictions may never take the
//! cluster below `members/2 + 1` available pods.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta;
use crate::crd::KvCluster;
use crate::naming;
use crate::planner::quorum;

/// PDB for a cluster of `members` pods.
pub fn pdb(kc: &KvCluster, members: u32) -> PodDisruptionBudget {
    let name = kc.name_any();
    PodDisruptionBudget {
        metadata: meta(kc, naming::pdb(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum(members as usize) as i32)),
            selector: Some(LabelSelector {
                match_labels: Some(naming::selector_labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn min_available_is_quorum() {
        let kc = kvcluster("demo", 3);
        for (n, q) in [(1, 1), (3, 2), (4, 3), (5, 3), (7, 4)] {
            let spec = pdb(&kc, n).spec.expect("spec");
            assert_eq!(spec.min_available, Some(IntOrString::Int(q)), "members {n}");
        }
    }
}
