//! The kubelet part: every pod bound to this node gets an address and a
//! network namespace, its volumes, and its containers as processes; its
//! status goes back through `pods/status` whenever it changes. A pod with a
//! deletionTimestamp is stopped (SIGTERM, SIGKILL after its grace period),
//! its namespace removed, and then deleted with grace period 0, as kubelet
//! does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::container::ContainerRun;
use crate::error::Error;
use crate::hosts::PodRecord;
use crate::netns::Network;
use crate::{setup, status};

/// What every pod shares.
pub struct Config {
    pub node: String,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub api: (String, u16),
    pub net: Network,
}

struct PodRun {
    pod: Pod,
    slot: u8,
    dir: PathBuf,
    /// Init containers: run one at a time, each to success, before the containers.
    init: Vec<ContainerRun>,
    containers: Vec<ContainerRun>,
    start_time: Timestamp,
    ready_to_run: bool,
    deleting: Option<Instant>,
    net_up: bool,
    last_sent: Option<serde_json::Value>,
}

/// All pods of this node, by uid.
pub struct Supervisor {
    cfg: Config,
    client: Client,
    runs: BTreeMap<String, PodRun>,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn policy(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
}

fn grace(pod: &Pod) -> Duration {
    let s = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds));
    Duration::from_secs(s.and_then(|s| u64::try_from(s).ok()).unwrap_or(30))
}

impl Supervisor {
    pub fn new(cfg: Config, client: Client) -> Supervisor {
        Supervisor { cfg, client, runs: BTreeMap::new() }
    }

    /// The hosts-file records of the pods that have an address.
    pub fn records(&self) -> Vec<PodRecord> {
        self.runs
            .values()
            .filter(|r| r.net_up)
            .map(|r| {
                let spec = r.pod.spec.as_ref();
                PodRecord {
                    ip: self.cfg.net.addr(r.slot).to_string(),
                    namespace: r.pod.namespace().unwrap_or_default(),
                    name: r.pod.name_any(),
                    hostname: spec.and_then(|s| s.hostname.clone()),
                    subdomain: spec.and_then(|s| s.subdomain.clone()),
                }
            })
            .collect()
    }

    fn free_slot(&self) -> Option<u8> {
        let used: BTreeSet<u8> = self.runs.values().map(|r| r.slot).collect();
        (2..=254).find(|s| !used.contains(s))
    }

    /// Takes on new pods of this node. Returns whether any pod got an
    /// address (the hosts file must be written before it starts).
    pub async fn admit(&mut self, pods: &[Pod]) -> bool {
        let mut added = false;
        for pod in pods {
            let mine = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.cfg.node.as_str());
            let Some(uid) = pod.uid() else { continue };
            if !mine {
                continue;
            }
            if let Some(r) = self.runs.get_mut(&uid) {
                r.pod = pod.clone();
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            if pod.metadata.deletion_timestamp.is_some() {
                self.delete_from_api(pod).await;
                continue;
            }
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            let Some(slot) = self.free_slot() else {
                warn!(pod = key(pod), "no free pod address");
                continue;
            };
            if let Err(e) = self.cfg.net.create(slot) {
                warn!(pod = key(pod), error = %e, "creating the pod network");
                self.cfg.net.remove(slot);
                continue;
            }
            let dir = self.cfg.work.join("pods").join(format!(
                "{}_{}_{uid}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                warn!(error = %e, "creating the pod directory");
            }
            let runs = |cs: &[k8s_openapi::api::core::v1::Container]| -> Vec<ContainerRun> {
                cs.iter()
                    .map(|c| ContainerRun::new(c.clone(), dir.join(format!("{}.termination-log", c.name))))
                    .collect()
            };
            let spec = pod.spec.clone().unwrap_or_default();
            let (init, containers) =
                (runs(spec.init_containers.as_deref().unwrap_or_default()), runs(&spec.containers));
            info!(pod = key(pod), ip = %self.cfg.net.addr(slot), "admitted");
            let run = PodRun {
                pod: pod.clone(),
                slot,
                dir,
                init,
                containers,
                start_time: Timestamp::now(),
                ready_to_run: false,
                deleting: None,
                net_up: true,
                last_sent: None,
            };
            self.runs.insert(uid, run);
            added = true;
        }
        added
    }

    async fn delete_from_api(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => info!(pod = key(pod), "deleted"),
            Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {}
            Err(e) => warn!(pod = key(pod), error = %e, "deleting"),
        }
    }

    /// One pass over the pods: setup, supervision, deletion, status.
    pub async fn sync(&mut self, pods: &[Pod]) {
        let live: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        let uids: Vec<String> = self.runs.keys().cloned().collect();
        for uid in uids {
            let Some(mut run) = self.runs.remove(&uid) else { continue };
            if !live.contains(&uid) {
                info!(pod = key(&run.pod), "gone from the API: killing");
                run.init.iter_mut().chain(run.containers.iter_mut()).for_each(ContainerRun::kill_now);
                if run.net_up {
                    self.cfg.net.remove(run.slot);
                }
                continue;
            }
            if run.pod.metadata.deletion_timestamp.is_some() && run.deleting.is_none() {
                let g = grace(&run.pod);
                info!(pod = key(&run.pod), grace = g.as_secs(), "stopping");
                run.init.iter_mut().chain(run.containers.iter_mut()).for_each(|c| c.stop(g));
                run.deleting = Some(Instant::now());
            }
            if !run.ready_to_run && run.deleting.is_none() {
                match setup::launches(&self.cfg, &self.client, &run.pod, run.slot, &run.dir).await {
                    Ok(launches) => {
                        for (c, l) in run.init.iter_mut().zip(launches.init) {
                            c.set_launch(l);
                        }
                        for (c, l) in run.containers.iter_mut().zip(launches.main) {
                            c.set_launch(l);
                        }
                        run.ready_to_run = true;
                    }
                    Err(e) => {
                        let (reason, message) = match e {
                            Error::Spec { reason, message } => (reason, message),
                            other => ("ContainerCreating", other.to_string()),
                        };
                        for c in run.init.iter_mut().chain(run.containers.iter_mut()) {
                            c.set_launch(Err(Error::Spec { reason, message: message.clone() }));
                        }
                    }
                }
            }
            let ip = self.cfg.net.addr(run.slot).to_string();
            let pol = policy(&run.pod);
            // Init containers first, one at a time, each restarted until it
            // succeeds (kubelet does so unless the pod's policy is Never;
            // no pod here has both Never and init containers).
            if let Some(c) = run.init.iter_mut().find(|c| !c.succeeded()) {
                c.tick(&ip, "OnFailure").await;
            } else {
                for c in &mut run.containers {
                    c.tick(&ip, &pol).await;
                }
            }
            let all_stopped = run.init.iter().chain(&run.containers).all(|c| !c.alive());
            if run.deleting.is_some() && all_stopped {
                if run.net_up {
                    self.cfg.net.remove(run.slot);
                }
                self.delete_from_api(&run.pod).await;
                continue;
            }
            if run.net_up && all_stopped && run.containers.iter().all(ContainerRun::finished) {
                self.cfg.net.remove(run.slot);
                run.net_up = false;
            }
            self.report(&mut run).await;
            self.runs.insert(uid, run);
        }
    }

    async fn report(&self, run: &mut PodRun) {
        let views: Vec<_> = run.containers.iter().map(ContainerRun::view).collect();
        let ip = self.cfg.net.addr(run.slot).to_string();
        let at = status::Placement {
            pod_ip: Some(&ip),
            host_ip: &self.cfg.net.gateway.to_string(),
            start_time: run.start_time,
        };
        let st = status::pod_status(&views, &policy(&run.pod), &at, run.pod.status.as_ref(), Timestamp::now());
        let body = json!({ "status": st });
        // Transition times come from the last status the API has, so compare
        // without them to see a real change.
        let mut cmp = body.clone();
        strip_times(&mut cmp);
        if run.last_sent.as_ref() == Some(&cmp) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &run.pod.namespace().unwrap_or_default());
        match api.patch_status(&run.pod.name_any(), &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(p) => {
                run.pod.status = p.status;
                run.last_sent = Some(cmp);
            }
            Err(e) => warn!(pod = key(&run.pod), error = %e, "reporting status"),
        }
    }

    /// Kills every pod's processes and removes their namespaces.
    pub async fn shutdown(&mut self) {
        for run in self.runs.values_mut() {
            run.containers.iter_mut().for_each(|c| c.stop(Duration::from_secs(3)));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.runs.values().any(|r| r.containers.iter().any(ContainerRun::alive)) {
            for run in self.runs.values_mut() {
                for c in &mut run.containers {
                    c.tick("0.0.0.0", "Never").await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (_, mut run) in std::mem::take(&mut self.runs) {
            run.containers.iter_mut().for_each(ContainerRun::kill_now);
            if run.net_up {
                self.cfg.net.remove(run.slot);
            }
        }
    }
}

fn strip_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("lastTransitionTime");
            m.values_mut().for_each(strip_times);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}
