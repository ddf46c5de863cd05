//! A container's environment, as kubelet builds it: the API server's
//! address, `envFrom`, then `env` from values (with `$(VAR)` expansion),
//! `fieldRef`, `configMapKeyRef` and `secretKeyRef`. Pure: config maps and
//! secrets come in as maps, fetched by the caller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::error::{Result, config};
use crate::spec::expand;

/// A pod field for `fieldRef` (env and downward API volumes).
pub fn field_ref(pod: &Pod, path: &str, pod_ip: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let key = |p: &str| -> Option<String> {
        let k = path.strip_prefix(p)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(k.to_string())
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.hostIP" => Some(crate::node::HOST_IP.to_string()),
        "metadata.labels" => Some(render_map(m.labels.as_ref())),
        "metadata.annotations" => Some(render_map(m.annotations.as_ref())),
        p if p.starts_with("metadata.labels[") => {
            key("metadata.labels").and_then(|k| m.labels.as_ref()?.get(&k).cloned())
        }
        p if p.starts_with("metadata.annotations[") => {
            key("metadata.annotations").and_then(|k| m.annotations.as_ref()?.get(&k).cloned())
        }
        _ => None,
    }
}

fn render_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| m.iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()).unwrap_or_default()
}

/// Config map and secret data the container's env refers to, by name.
#[derive(Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// The container's environment in order: `KUBERNETES_SERVICE_*`, then
/// `envFrom`, then `env` (later wins), each value `$(VAR)`-expanded against
/// the variables before it.
pub fn environment(
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    api: (&str, u16),
    src: &Sources,
) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), api.0.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), api.1.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), api.1.to_string()),
        ("KUBERNETES_PORT".into(), format!("tcp://{}:{}", api.0, api.1)),
    ];
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, name, optional) = if let Some(r) = &from.config_map_ref {
            (src.config_maps.get(&r.name), &r.name, r.optional.unwrap_or(false))
        } else if let Some(r) = &from.secret_ref {
            (src.secrets.get(&r.name), &r.name, r.optional.unwrap_or(false))
        } else {
            continue;
        };
        match data {
            Some(d) => d.iter().for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v.clone())),
            None if optional => {}
            None => return Err(config(format!("envFrom: {name:?} not found"))),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            let (found, optional) = if let Some(f) = &from.field_ref {
                (field_ref(pod, &f.field_path, pod_ip), false)
            } else if let Some(r) = &from.config_map_key_ref {
                (src.config_maps.get(&r.name).and_then(|d| d.get(&r.key)).cloned(), r.optional.unwrap_or(false))
            } else if let Some(r) = &from.secret_key_ref {
                (src.secrets.get(&r.name).and_then(|d| d.get(&r.key)).cloned(), r.optional.unwrap_or(false))
            } else {
                return Err(config(format!("env {}: unsupported valueFrom", e.name)));
            };
            match (found, optional) {
                (Some(v), _) => v,
                (None, true) => continue,
                (None, false) => return Err(config(format!("env {}: its source has no value", e.name))),
            }
        } else {
            let known = env.clone();
            expand(e.value.as_deref().unwrap_or(""), &|n| lookup(&known, n))
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// The value of `name` in `env`.
pub fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use k8s_openapi::api::core::v1::{ConfigMapKeySelector, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn environment_resolves_sources() {
        let pod = Pod {
            metadata: ObjectMeta { name: Some("demo-1".into()), namespace: Some("ns".into()), ..Default::default() },
            spec: Some(PodSpec { node_name: Some("e2e-node".into()), ..Default::default() }),
            ..Default::default()
        };
        let ev = |name: &str, from: EnvVarSource| EnvVar { name: name.into(), value_from: Some(from), value: None };
        let c = Container {
            name: "kvd".into(),
            env: Some(vec![
                ev(
                    "POD",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), api_version: None }),
                        ..Default::default()
                    },
                ),
                ev(
                    "IP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), api_version: None }),
                        ..Default::default()
                    },
                ),
                ev(
                    "IC",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "k".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                EnvVar { name: "URL".into(), value: Some("http://$(POD):$(PORT)".into()), value_from: None },
            ]),
            ..Default::default()
        };
        let mut src = Sources::default();
        src.config_maps.insert("cfg".into(), BTreeMap::from([("k".to_string(), "v".to_string())]));
        let env = environment(&pod, &c, "10.244.0.5", ("10.244.0.1", 6443), &src).expect("env");
        assert_eq!(lookup(&env, "POD").as_deref(), Some("demo-1"));
        assert_eq!(lookup(&env, "IP").as_deref(), Some("10.244.0.5"));
        assert_eq!(lookup(&env, "IC").as_deref(), Some("v"));
        assert_eq!(lookup(&env, "URL").as_deref(), Some("http://demo-1:$(PORT)"));
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST").as_deref(), Some("10.244.0.1"));
        let missing = environment(&pod, &c, "ip", ("h", 1), &Sources::default());
        assert!(matches!(missing, Err(Error::Spec { reason: "CreateContainerConfigError", .. })));
    }
}
