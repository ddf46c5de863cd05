//! A pod's volumes as directories on the node, made once when the pod
//! starts: a claim is its bound PersistentVolume's directory, `emptyDir` a
//! fresh directory, `configMap`, `secret`, `downwardAPI` and `projected`
//! (the service-account token of a TokenRequest, `ca.crt`, `namespace`)
//! files written under the pod's directory, `hostPath` the path itself.
//! Contents are not refreshed while the pod runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount, ServiceAccountTokenProjection,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::env::field_ref;
use crate::error::{Error, Result, config, io};
use crate::runtime::Mount;

fn write(dir: &Path, rel: &str, data: &[u8]) -> Result<()> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(&p, data).map_err(io(format!("writing {}", p.display())))
}

/// Writes `data` (key to bytes) into `dir`, all keys or just `items`.
fn write_keys(dir: &Path, data: &BTreeMap<String, Vec<u8>>, items: Option<&Vec<KeyToPath>>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    match items {
        Some(items) => {
            for i in items {
                let v = data.get(&i.key).ok_or_else(|| config(format!("no key {:?}", i.key)))?;
                write(dir, &i.path, v)?;
            }
        }
        None => data.iter().try_for_each(|(k, v)| write(dir, k, v))?,
    }
    Ok(())
}

async fn config_map(client: &Client, ns: &str, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await? {
        Some(cm) => {
            let mut out: BTreeMap<String, Vec<u8>> =
                cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            out.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(config(format!("configmap {name:?} not found"))),
    }
}

async fn secret(client: &Client, ns: &str, name: &str, optional: bool) -> Result<BTreeMap<String, Vec<u8>>> {
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await? {
        Some(s) => {
            let mut out: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            out.extend(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())));
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(config(format!("secret {name:?} not found"))),
    }
}

/// String data of config maps or secrets (for env), by name.
pub async fn string_data(
    client: &Client,
    ns: &str,
    name: &str,
    is_secret: bool,
) -> Result<Option<BTreeMap<String, String>>> {
    let data =
        if is_secret { secret(client, ns, name, true).await? } else { config_map(client, ns, name, true).await? };
    Ok((!data.is_empty())
        .then(|| data.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect()))
}

async fn token(client: &Client, pod: &Pod, p: &ServiceAccountTokenProjection) -> Result<Vec<u8>> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(p.audience.iter().cloned().collect()),
            expiration_seconds: Some(p.expiration_seconds.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let out: TokenRequest = api.create_subresource("token", &sa, &PostParams::default(), &req).await?;
    Ok(out.status.and_then(|s| s.token).unwrap_or_default().into_bytes())
}

fn downward(dir: &Path, pod: &Pod, pod_ip: &str, items: &[DownwardAPIVolumeFile]) -> Result<()> {
    for i in items {
        let Some(f) = &i.field_ref else { continue };
        let v = field_ref(pod, &f.field_path, pod_ip)
            .ok_or_else(|| config(format!("unsupported field {}", f.field_path)))?;
        write(dir, &i.path, v.as_bytes())?;
    }
    Ok(())
}

async fn claim_path(client: &Client, ns: &str, claim: &str) -> Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).get(claim).await?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = pvc.spec.and_then(|s| s.volume_name).filter(|n| bound && !n.is_empty()) else {
        return Err(Error::NotReady(format!("claim {claim} is not bound")));
    };
    let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
    let path = pv.spec.and_then(|s| s.host_path).map(|h| h.path);
    path.map(PathBuf::from).ok_or_else(|| config(format!("volume {pv_name} has no hostPath")))
}

/// Makes every volume of `pod` under `pod_dir`; volume name to directory.
pub async fn prepare(client: &Client, pod: &Pod, pod_dir: &Path, pod_ip: &str) -> Result<BTreeMap<String, PathBuf>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = BTreeMap::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = pod_dir.join("volumes").join(&v.name);
        let path = if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            dir
        } else if let Some(h) = &v.host_path {
            PathBuf::from(&h.path)
        } else if let Some(c) = &v.persistent_volume_claim {
            claim_path(client, &ns, &c.claim_name).await?
        } else if let Some(c) = &v.config_map {
            let data = config_map(client, &ns, &c.name, c.optional.unwrap_or(false)).await?;
            write_keys(&dir, &data, c.items.as_ref())?;
            dir
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = secret(client, &ns, &name, s.optional.unwrap_or(false)).await?;
            write_keys(&dir, &data, s.items.as_ref())?;
            dir
        } else if let Some(d) = &v.downward_api {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            downward(&dir, pod, pod_ip, d.items.as_deref().unwrap_or_default())?;
            dir
        } else if let Some(p) = &v.projected {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            for s in p.sources.iter().flatten() {
                if let Some(t) = &s.service_account_token {
                    write(&dir, &t.path, &token(client, pod, t).await?)?;
                } else if let Some(c) = &s.config_map {
                    let data = config_map(client, &ns, &c.name, c.optional.unwrap_or(false)).await?;
                    write_keys(&dir, &data, c.items.as_ref())?;
                } else if let Some(c) = &s.secret {
                    let data = secret(client, &ns, &c.name, c.optional.unwrap_or(false)).await?;
                    write_keys(&dir, &data, c.items.as_ref())?;
                } else if let Some(d) = &s.downward_api {
                    downward(&dir, pod, pod_ip, d.items.as_deref().unwrap_or_default())?;
                }
            }
            dir
        } else {
            return Err(config(format!("volume {}: unsupported type", v.name)));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// The bind mounts of container `c`'s volumeMounts.
pub fn mounts(c: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = volumes.get(&m.name).ok_or_else(|| config(format!("no volume {:?}", m.name)))?;
        let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
                }
                p
            }
            None => base.clone(),
        };
        out.push(Mount { src, dst: PathBuf::from(&m.mount_path), read_only: m.read_only.unwrap_or(false) });
    }
    Ok(out)
}
