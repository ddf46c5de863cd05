//! Reflector caches of the Kubernetes objects a reconcile reads, and the
//! one struct (`Objects`) a reconcile reads them into, from the caches or
//! from the API server.
//!
//! The controller's watches already stream every object the KvClusters own
//! (StatefulSet, Services, ConfigMap, PDB, CronJobs, Jobs); `Caches` keeps
//! what they stream, plus member and Job pods and member claims, whose
//! watches feed the caches without triggering reconciles. A settled cluster's
//! reconcile then reads nothing from the API server but the Secrets (which
//! the operator may not watch) and writes only its status.
//!
//! A cache lags the API server by a watch event, so a reconcile that
//! follows a step of its own (one that wrote objects, `FRESH_AFTER_STEP`)
//! reads the API server instead: the planner never sees a pod it has just
//! deleted or a ConfigMap before its own write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};

use crate::naming;
use crate::{Error, Result};

/// How long after a step the next reconciles read the API server.
pub const FRESH_AFTER_STEP: Duration = Duration::from_secs(10);
/// How long a reconcile waits for the caches' first lists.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Label selector of the member pods and claims (any cluster) and of the
/// maintenance Job pods; the caches are filtered per cluster on reading.
pub const POD_SELECTOR: &str = "app.kubernetes.io/instance,app.kubernetes.io/name in (kvd,kvctl)";
/// Label selector of member claims.
pub const CLAIM_SELECTOR: &str = "app.kubernetes.io/instance,app.kubernetes.io/name=kvd";

/// The read side of every cache one controller (one namespace, or all) keeps.
#[derive(Clone)]
pub struct Caches {
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub cronjobs: Store<CronJob>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
    /// Per cluster ("namespace/name"): when this process last took a step.
    steps: Arc<Mutex<BTreeMap<String, Instant>>>,
}

/// A watch of `api` under `cfg` that fills a cache, and the cache.
/// managedFields are dropped before caching (they are most of an object's
/// size and never read).
pub fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (Store<K>, impl Stream<Item = std::result::Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg)
        .default_backoff()
        .modify(|o| {
            o.managed_fields_mut().clear();
        })
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

impl Caches {
    /// The caches from their stores (each filled by a stream the controller polls).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        statefulsets: Store<StatefulSet>,
        services: Store<Service>,
        config_maps: Store<ConfigMap>,
        pdbs: Store<PodDisruptionBudget>,
        cronjobs: Store<CronJob>,
        jobs: Store<Job>,
        pods: Store<Pod>,
        claims: Store<PersistentVolumeClaim>,
    ) -> Caches {
        Caches { statefulsets, services, config_maps, pdbs, cronjobs, jobs, pods, claims, steps: Default::default() }
    }

    /// Waits until every cache has its first list.
    pub async fn ready(&self) -> Result<()> {
        let all = async {
            self.statefulsets.wait_until_ready().await?;
            self.services.wait_until_ready().await?;
            self.config_maps.wait_until_ready().await?;
            self.pdbs.wait_until_ready().await?;
            self.cronjobs.wait_until_ready().await?;
            self.jobs.wait_until_ready().await?;
            self.pods.wait_until_ready().await?;
            self.claims.wait_until_ready().await
        };
        match tokio::time::timeout(READY_TIMEOUT, all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::CacheNotReady(e.to_string())),
            Err(_) => Err(Error::CacheNotReady(format!("no first list within {READY_TIMEOUT:?}"))),
        }
    }

    /// Records that this process just took a step for cluster `key`.
    pub fn stepped(&self, key: &str) {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), Instant::now());
    }

    /// Forgets a deleted cluster.
    pub fn forget(&self, key: &str) {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Whether cluster `key` may be observed from the caches now.
    pub fn may_read_cache(&self, key: &str) -> bool {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.get(key).is_none_or(|t| t.elapsed() >= FRESH_AFTER_STEP)
    }
}

/// The Kubernetes objects one reconcile reads for cluster `name`.
#[derive(Debug, Default)]
pub struct Objects {
    pub statefulset: Option<StatefulSet>,
    /// Member pods (the members' selector).
    pub pods: Vec<Pod>,
    /// Member claims (the members' selector).
    pub claims: Vec<PersistentVolumeClaim>,
    pub peer_service: bool,
    pub client_service: bool,
    pub config_map: Option<ConfigMap>,
    pub pdb: bool,
    /// Maintenance CronJobs, Jobs and Job pods (the maintenance selector).
    pub cronjobs: Vec<CronJob>,
    pub jobs: Vec<Job>,
    pub job_pods: Vec<Pod>,
}

/// Where a reconcile's objects came from (the `source` of
/// `kvd_operator_observe_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cache,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Api => "api",
        }
    }
}

/// Whether `labels` carry every pair of `want`.
fn has_labels(labels: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The objects of `store` in namespace `ns` whose labels carry `want`, by name.
fn select<K>(store: &Store<K>, ns: &str, want: &BTreeMap<String, String>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut out: Vec<K> = store
        .state_filter(|o| o.namespace().as_deref() == Some(ns) && has_labels(o.labels(), want))
        .into_iter()
        .map(|o| o.as_ref().clone())
        .collect();
    out.sort_by_key(|o| o.name_any());
    out
}

/// Object `name` of `store` in namespace `ns`.
fn one<K>(store: &Store<K>, ns: &str, name: &str) -> Option<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(ns)).map(|o| o.as_ref().clone())
}

impl Objects {
    /// From the caches.
    pub fn from_cache(c: &Caches, ns: &str, name: &str) -> Objects {
        let members = naming::selector_labels(name);
        let maintenance = naming::maintenance_selector_labels(name);
        Objects {
            statefulset: one(&c.statefulsets, ns, &naming::statefulset(name)),
            pods: select(&c.pods, ns, &members),
            claims: select(&c.claims, ns, &members),
            peer_service: one(&c.services, ns, &naming::peer_service(name)).is_some(),
            client_service: one(&c.services, ns, &naming::client_service(name)).is_some(),
            config_map: one(&c.config_maps, ns, &naming::config_map(name)),
            pdb: one(&c.pdbs, ns, &naming::pdb(name)).is_some(),
            cronjobs: select(&c.cronjobs, ns, &maintenance),
            jobs: select(&c.jobs, ns, &maintenance),
            job_pods: select(&c.pods, ns, &maintenance),
        }
    }

    /// From the API server: a GET or a list per kind.
    pub async fn from_api(client: &kube::Client, ns: &str, name: &str) -> Result<Objects> {
        let members = ListParams::default().labels(&naming::selector_string(name));
        let maintenance = ListParams::default().labels(&naming::maintenance_selector(name));
        let svcs = Api::<Service>::namespaced(client.clone(), ns);
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        Ok(Objects {
            statefulset: Api::<StatefulSet>::namespaced(client.clone(), ns).get_opt(&naming::statefulset(name)).await?,
            pods: pods.list(&members).await?.items,
            claims: Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns).list(&members).await?.items,
            peer_service: svcs.get_opt(&naming::peer_service(name)).await?.is_some(),
            client_service: svcs.get_opt(&naming::client_service(name)).await?.is_some(),
            config_map: Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(&naming::config_map(name)).await?,
            pdb: Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
                .get_opt(&naming::pdb(name))
                .await?
                .is_some(),
            cronjobs: Api::<CronJob>::namespaced(client.clone(), ns).list(&maintenance).await?.items,
            jobs: Api::<Job>::namespaced(client.clone(), ns).list(&maintenance).await?.items,
            job_pods: pods.list(&maintenance).await?.items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(ns.into());
        p.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        p
    }

    fn store_of<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            writer.apply_watcher_event(&Event::InitApply(o));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    fn caches(pods: Vec<Pod>) -> Caches {
        Caches::new(
            store_of(vec![]),
            store_of(vec![]),
            store_of(vec![]),
            store_of(vec![]),
            store_of(vec![]),
            store_of(vec![]),
            store_of(pods),
            store_of(vec![]),
        )
    }

    /// A cluster's pods are those of its namespace with its members' labels;
    /// its Job pods those with its maintenance labels, whatever else they carry.
    #[test]
    fn pods_are_selected_per_cluster_and_namespace() {
        let member = [("app.kubernetes.io/name", "kvd"), ("app.kubernetes.io/instance", "demo")];
        let job = [("app.kubernetes.io/name", "kvctl"), ("app.kubernetes.io/instance", "demo"), ("x", "y")];
        let c = caches(vec![
            pod("ns", "demo-1", &member),
            pod("ns", "demo-0", &member),
            pod("other", "demo-0", &member),
            pod("ns", "demo-compact-1-abc", &job),
            pod("ns", "demo2-0", &[("app.kubernetes.io/name", "kvd"), ("app.kubernetes.io/instance", "demo2")]),
        ]);
        let o = Objects::from_cache(&c, "ns", "demo");
        let names = |v: &[Pod]| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(&o.pods), ["demo-0", "demo-1"]);
        assert_eq!(names(&o.job_pods), ["demo-compact-1-abc"]);
        assert!(o.statefulset.is_none() && !o.pdb && !o.peer_service && o.config_map.is_none());
    }

    /// Within `FRESH_AFTER_STEP` of a step a cluster is read from the API
    /// server; other clusters, and clusters never stepped, from the caches.
    #[test]
    fn a_step_makes_the_next_reads_fresh() {
        let c = caches(vec![]);
        assert!(c.may_read_cache("ns/demo"));
        c.stepped("ns/demo");
        assert!(!c.may_read_cache("ns/demo"));
        assert!(c.may_read_cache("ns/other"));
        c.forget("ns/demo");
        assert!(c.may_read_cache("ns/demo"));
    }

    #[tokio::test]
    async fn filled_caches_are_ready() {
        caches(vec![]).ready().await.expect("ready");
    }
}
