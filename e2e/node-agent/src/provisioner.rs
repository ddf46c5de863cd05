//! The volume provisioner: a default StorageClass `local` (provisioner
//! `kvd.local/node-agent`, binding Immediate, reclaim Delete). Each Pending
//! claim of that class gets a PersistentVolume, a directory under the work
//! dir exposed as `hostPath`, pre-bound to the claim through `claimRef` (the
//! PV controller completes the binding). A Released volume of ours is
//! deleted, directory and all, which makes StatefulSet claim retention
//! observable. The class allows volume expansion: a bound claim asking for
//! more than it has gets it, as external-resizer and kubelet's online file
//! system expansion give it (the volume's capacity, then the claim's
//! status), while its pod keeps running (a directory has no size to grow).
//! Beside a real kubelet, this is all the agent does (`--provisioner-only`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::error::{Result, io};

/// The StorageClass and the provisioner name on its volumes.
pub const CLASS: &str = "local";
pub const PROVISIONER: &str = "kvd.local/node-agent";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Creates the default StorageClass if missing.
pub async fn ensure_class(client: &Client) -> Result<()> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let sc = StorageClass {
        metadata: ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        allow_volume_expansion: Some(true),
        ..Default::default()
    };
    match classes.create(&PostParams::default(), &sc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn volume_for(pvc: &PersistentVolumeClaim, dir: &Path) -> Option<PersistentVolume> {
    let spec = pvc.spec.as_ref()?;
    let name = format!("pvc-{}", pvc.uid()?);
    let capacity = spec.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(PROVISIONED_BY.to_string(), PROVISIONER.to_string())])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(capacity.into_iter().filter(|(k, _)| k == "storage").collect()),
            access_modes: spec.access_modes.clone(),
            storage_class_name: Some(CLASS.into()),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            volume_mode: spec.volume_mode.clone(),
            host_path: Some(HostPathVolumeSource {
                path: dir.join(&name).to_string_lossy().into_owned(),
                type_: Some("Directory".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: pvc.namespace(),
                name: Some(pvc.name_any()),
                uid: pvc.uid(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Grows `pvc`'s volume and then the claim's status to what it requests,
/// if it is a bound claim of ours asking for another size.
async fn expand(client: &Client, pvc: &PersistentVolumeClaim) -> Result<()> {
    let spec = pvc.spec.as_ref();
    let requested = spec.and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage").cloned());
    let capacity = pvc.status.as_ref().and_then(|s| s.capacity.as_ref()?.get("storage").cloned());
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let ours = spec.and_then(|s| s.storage_class_name.as_deref()) == Some(CLASS);
    let (Some(requested), Some(capacity), Some(pv)) = (requested, capacity, spec.and_then(|s| s.volume_name.clone()))
    else {
        return Ok(());
    };
    if !bound || !ours || requested == capacity {
        return Ok(());
    }
    let (ns, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
    let size = serde_json::json!({ "storage": requested });
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    volumes
        .patch(&pv, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "spec": { "capacity": size } })))
        .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let status = serde_json::json!({ "status": { "capacity": size, "allocatedResources": size, "conditions": null } });
    claims.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
    info!(claim = %format!("{ns}/{name}"), from = capacity.0, to = requested.0, "expanded");
    Ok(())
}

/// One provisioning pass: volumes for new claims, expansion of grown ones,
/// deletion of released ones.
pub async fn sync(client: &Client, dir: &Path) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let existing = volumes.list(&ListParams::default()).await?.items;
    let names: Vec<String> = existing.iter().map(|v| v.name_any()).collect();
    for pvc in claims.list(&ListParams::default()).await?.items {
        let spec = pvc.spec.as_ref();
        let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let ours = spec.and_then(|s| s.storage_class_name.as_deref()) == Some(CLASS);
        let unbound = spec.and_then(|s| s.volume_name.as_deref()).is_none_or(str::is_empty);
        if let Err(e) = expand(client, &pvc).await {
            warn!(error = %e, claim = pvc.name_any(), "expanding a volume");
        }
        if !(pending && ours && unbound) || pvc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(pv) = volume_for(&pvc, dir) else { continue };
        if names.contains(&pv.name_any()) {
            continue;
        }
        if let Some(path) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| h.path.clone()) {
            std::fs::create_dir_all(&path).map_err(io(format!("creating {path}")))?;
            // Writable by any pod user, as local-path-provisioner makes its
            // directories: kubelet applies no fsGroup to hostPath volumes,
            // and the member images run as 65532.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(io(format!("opening up {path}")))?;
        }
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                info!(pv = pv.name_any(), claim = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), "provisioned")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => warn!(error = %e, "creating a volume"),
        }
    }
    for pv in existing {
        let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let delete = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        if !ours || !delete || !matches!(phase, "Released" | "Failed") || pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // Only directories this agent made, under its own work dir.
        if let Some(path) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| h.path.clone())
            && Path::new(&path).starts_with(dir)
            && let Err(e) = std::fs::remove_dir_all(&path)
        {
            warn!(error = %e, path, "removing a released volume's directory");
        }
        match volumes.delete(&pv.name_any(), &DeleteParams::default()).await {
            Ok(_) => info!(pv = pv.name_any(), "deleted a released volume"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(error = %e, "deleting a released volume"),
        }
    }
    Ok(())
}
