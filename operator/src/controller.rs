//! The controller: `Context` (client, event recorder, diagnostics, metrics,
//! etcd client), `reconcile` wrapped in kube's `finalizer()`, `error_policy`,
//! status written by server-side apply, and `run`, which watches KvClusters
//! (not their status: `intent`), the objects they own and the Jobs of their
//! maintenance CronJobs, into the caches reconciles read (`cache.rs`).
//! Errors back off per KvCluster, 5 s doubling to 5 min.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{PredicateConfig, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::RwLock;
use tracing::{Span, field, info, instrument, warn};

use crate::act::Actor;
use crate::cache::{self, CLAIM_SELECTOR, Caches, Objects, POD_SELECTOR, Source};
use crate::crd::{KvCluster, KvClusterStatus};
use crate::etcd::EtcdClient;
use crate::metrics::{Metrics, action_kind};
use crate::naming::{FINALIZER, MANAGER};
use crate::planner::{Action, plan};
use crate::{Error, Result, observe, status};
use kvd_api::client::ClientTls;

/// Shared with every reconcile.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub diagnostics: Arc<RwLock<Diagnostics>>,
    pub metrics: Arc<Metrics>,
    pub etcd: EtcdClient,
    /// Per cluster ("namespace/name"): members defragmented by this process
    /// and their db size afterwards (`Observation::defragged`). Memory only:
    /// after a restart a member may be defragmented once more.
    pub defragged: Arc<std::sync::Mutex<BTreeMap<String, BTreeMap<u64, i64>>>>,
    /// Per TLS cluster: the client TLS its channels were made with.
    pub tls_clients: Arc<std::sync::Mutex<BTreeMap<String, (ClientTls, EtcdClient)>>>,
    /// Per cluster: reconciles failed in a row (the error backoff).
    pub failures: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
    /// The object caches of the controller running this reconcile (None:
    /// every read goes to the API server).
    pub caches: Option<Caches>,
}

/// What `/` of the HTTP server reports.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnostics {
    pub last_event: Timestamp,
    #[serde(skip)]
    pub reporter: Reporter,
}

impl Default for Diagnostics {
    fn default() -> Self {
        Diagnostics {
            last_event: Timestamp::now(),
            reporter: Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
        }
    }
}

/// State shared between the controller and the HTTP server.
#[derive(Clone, Default)]
pub struct State {
    pub diagnostics: Arc<RwLock<Diagnostics>>,
    pub metrics: Arc<Metrics>,
}

impl State {
    /// Text metrics.
    pub fn metrics(&self) -> String {
        self.metrics.encode().unwrap_or_default()
    }

    /// Diagnostics snapshot.
    pub async fn diagnostics(&self) -> Diagnostics {
        self.diagnostics.read().await.clone()
    }

    /// A reconcile context for `client`.
    pub async fn to_context(&self, client: Client, etcd_timeout: Duration) -> Arc<Context> {
        let reporter = self.diagnostics.read().await.reporter.clone();
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics: self.metrics.clone(),
            diagnostics: self.diagnostics.clone(),
            etcd: EtcdClient::new("", etcd_timeout),
            defragged: Default::default(),
            tls_clients: Default::default(),
            failures: Default::default(),
            caches: None,
        })
    }
}

impl Context {
    fn defragged_of(&self, key: &str) -> BTreeMap<u64, i64> {
        self.defragged.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned().unwrap_or_default()
    }

    /// The etcd client for cluster `name` (`key` = "ns/name"): with `tls`,
    /// one kept as long as the TLS material stays the same.
    fn etcd_for(&self, key: &str, name: &str, tls: Option<ClientTls>) -> EtcdClient {
        let mut cache = self.tls_clients.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tls) = tls else {
            cache.remove(key);
            return self.etcd.for_cluster(name);
        };
        if let Some((t, c)) = cache.get(key)
            && *t == tls
        {
            return c.clone();
        }
        let c = self.etcd.for_cluster(name).with_tls(tls.clone());
        cache.insert(key.to_string(), (tls, c.clone()));
        c
    }

    /// Counts a failed reconcile of `kc`; returns how many in a row.
    fn failed(&self, kc: &KvCluster) -> u32 {
        let key = format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any());
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn remember_defrag(&self, key: &str, id: u64, size: i64) {
        self.defragged.lock().unwrap_or_else(|e| e.into_inner()).entry(key.to_string()).or_default().insert(id, size);
    }
}

/// How soon to look again after `a`.
pub fn requeue_after(a: &Action) -> Duration {
    match a {
        Action::Idle => Duration::from_secs(60),
        Action::Degraded { .. } => Duration::from_secs(30),
        Action::Wait { .. } => Duration::from_secs(10),
        _ => Duration::from_secs(5),
    }
}

#[instrument(skip(ctx, kc), fields(kvcluster = %kc.name_any(), trace_id))]
async fn reconcile(kc: Arc<KvCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    Span::current().record("trace_id", field::display(&kc.uid().unwrap_or_default()));
    let _timer = ctx.metrics.count_and_measure();
    ctx.diagnostics.write().await.last_event = Timestamp::now();
    let ns = kc.namespace().ok_or_else(|| Error::Invalid("KvCluster without namespace".into()))?;
    let api: Api<KvCluster> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, kc, |event| async {
        match event {
            Finalizer::Apply(kc) => apply(kc, ctx.clone()).await,
            Finalizer::Cleanup(kc) => cleanup(kc, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Observe → plan → act → status; one step per reconcile.
async fn apply(kc: Arc<KvCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let name = kc.name_any();
    let ns = kc.namespace().ok_or_else(|| Error::Invalid("KvCluster without namespace".into()))?;
    let key = format!("{ns}/{name}");
    // The certificates first (mode Operator issues them, CertManager asks
    // cert-manager for them): the operator's own is read next.
    let certs = crate::certs::ensure(&ctx.client, &ctx.recorder, &kc).await?;
    let tls = crate::tls::client_tls(&ctx.client, &kc).await;
    let etcd = ctx.etcd_for(&key, &name, tls.clone().ok().flatten());
    let objects = match ctx.caches.as_ref().filter(|c| c.may_read_cache(&key)) {
        Some(c) => {
            c.ready().await?;
            ctx.metrics.observed(Source::Cache);
            Objects::from_cache(c, &ns, &name)
        }
        None => {
            ctx.metrics.observed(Source::Api);
            Objects::from_api(&ctx.client, &ns, &name).await?
        }
    };
    let mut obs = observe::gather(&kc, objects, &etcd).await?;
    obs.defragged = ctx.defragged_of(&key);
    obs.desired.tls_problem = tls.err();
    obs.certs_not_after = certs.not_after;
    obs.certs_pending = certs.pending;
    let action = plan(&obs);
    info!(action = action_kind(&action), detail = ?action, "planned");
    ctx.metrics.action(&action);
    let actor = Actor { client: &ctx.client, etcd: &etcd, recorder: &ctx.recorder };
    let stepped = !matches!(action, Action::Idle | Action::Wait { .. } | Action::Degraded { .. });
    let outcome = actor.act(&kc, &obs, &action).await;
    if stepped && let Some(c) = &ctx.caches {
        c.stepped(&key);
    }
    let outcome = outcome?;
    if let Some((id, size)) = outcome.defragged {
        ctx.remember_defrag(&key, id, size);
    }
    let st = status::build(&kc, &obs, &action, &outcome);
    let prev = kc.status.clone().unwrap_or_default();
    ctx.metrics.backups(&kc, &prev, &st, &obs);
    ctx.metrics.cluster(&kc, &st, &action);
    backup_events(&ctx.recorder, &kc, &prev, &st).await;
    let patch = json!({ "apiVersion": "kvd.io/v1alpha1", "kind": "KvCluster", "status": st });
    let api: Api<KvCluster> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    Ok(Requeue::requeue(requeue_after(&action)))
}

/// Events for a backup that newly succeeded or failed.
async fn backup_events(recorder: &Recorder, kc: &KvCluster, prev: &KvClusterStatus, st: &KvClusterStatus) {
    use kube::runtime::events::{Event, EventType};
    let mut events = Vec::new();
    if let Some(b) = st.last_backup.as_ref().filter(|b| prev.last_backup.as_ref() != Some(b)) {
        let note = format!("backup {} of revision {}: {} bytes, from {}", b.key, b.revision, b.size, b.member);
        events.push((EventType::Normal, "BackupSucceeded", note));
    }
    if let Some(f) = st.last_backup_failure.as_ref().filter(|f| prev.last_backup_failure.as_ref() != Some(f)) {
        events.push((EventType::Warning, "BackupFailed", format!("{}: {}", f.job, f.message)));
    }
    for (type_, reason, note) in events {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = recorder.publish(&ev, &kube::Resource::object_ref(kc, &())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Owned objects go with the KvCluster (owner references); claims follow
/// the StatefulSet's `whenDeleted` policy.
async fn cleanup(kc: Arc<KvCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let key = format!("{}/{}", kc.namespace().unwrap_or_default(), kc.name_any());
    ctx.defragged.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    ctx.tls_clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    ctx.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    if let Some(c) = &ctx.caches {
        c.forget(&key);
    }
    ctx.metrics.forget(&kc);
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "DeleteRequested".into(),
        note: Some(format!("deleting KvCluster {}", kc.name_any())),
        action: "Deleting".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &kube::Resource::object_ref(kc.as_ref(), &())).await {
        warn!(error = %e, "could not publish event");
    }
    Ok(Requeue::await_change())
}

/// What of a KvCluster asks for a reconcile: its generation (the spec),
/// annotations (`kvd.io/backup-now`), labels, finalizers and deletion; a
/// change of status alone does not.
pub fn intent(kc: &KvCluster) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let m = &kc.metadata;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (m.generation, &m.annotations, &m.labels, &m.finalizers, m.deletion_timestamp.is_some()).hash(&mut h);
    Some(h.finish())
}

/// The wait after the `n`th failure in a row of one KvCluster: 5 s,
/// doubling, at most 5 minutes.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << n.saturating_sub(1).min(6)).min(300))
}

/// Logs, counts and requeues after a per-object exponential backoff.
fn error_policy(kc: Arc<KvCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let n = ctx.failed(&kc);
    warn!(kvcluster = %kc.name_any(), error = %error, failures = n, "reconcile failed");
    ctx.metrics.reconcile_failure(&kc, error);
    Requeue::requeue(backoff(n))
}

/// Where the operator looks for KvClusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// These namespaces only (a Role in each).
    Namespaces(Vec<String>),
}

impl Scope {
    /// `names` (empty: the whole cluster).
    pub fn of(names: &[String]) -> Scope {
        let mut names: Vec<String> = names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
        names.sort();
        names.dedup();
        if names.is_empty() { Scope::Cluster } else { Scope::Namespaces(names) }
    }
}

/// `Api::all`, or `Api::namespaced` in `ns`.
fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until a shutdown signal: one over the whole cluster,
/// or one per namespace of `scope` (each with its own watches, which is what
/// a Role in each namespace allows), sharing one context.
pub async fn run(state: State, client: Client, etcd_timeout: Duration, scope: Scope) -> Result<()> {
    let ctx = state.to_context(client.clone(), etcd_timeout).await;
    match scope {
        Scope::Cluster => run_in(client, None, ctx).await,
        Scope::Namespaces(names) => {
            info!(namespaces = ?names, "watching these namespaces only");
            let runs = names.iter().map(|ns| run_in(client.clone(), Some(ns.as_str()), ctx.clone()));
            futures::future::try_join_all(runs).await.map(|_| ())
        }
    }
}

/// The controller over `ns` (None: every namespace). Every watch fills a
/// cache (`cache.rs`) that the reconciles read; the owned objects' and the
/// Jobs' also trigger reconciles, the pods' and claims' do not.
async fn run_in(client: Client, ns: Option<&str>, ctx: Arc<Context>) -> Result<()> {
    let kcs = api::<KvCluster>(&client, ns);
    kcs.list(&ListParams::default().limit(1)).await?;
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // KvCluster events that change what the operator is asked to do: not
    // its own status writes (the periodic requeue observes the members).
    let (reader, writer) = reflector::store();
    let trigger = watcher(kcs, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(intent, PredicateConfig::default());
    let (statefulsets, sts_stream) = cache::reflect(api::<StatefulSet>(&client, ns), owned.clone());
    let (services, svc_stream) = cache::reflect(api::<Service>(&client, ns), owned.clone());
    let (config_maps, cm_stream) = cache::reflect(api::<ConfigMap>(&client, ns), owned.clone());
    let (pdbs, pdb_stream) = cache::reflect(api::<PodDisruptionBudget>(&client, ns), owned.clone());
    let (cronjobs, cronjob_stream) = cache::reflect(api::<CronJob>(&client, ns), owned.clone());
    let (jobs, job_stream) = cache::reflect(api::<Job>(&client, ns), owned);
    let (pods, pod_stream) = cache::reflect(api::<Pod>(&client, ns), watcher::Config::default().labels(POD_SELECTOR));
    let (claims, claim_stream) =
        cache::reflect(api::<PersistentVolumeClaim>(&client, ns), watcher::Config::default().labels(CLAIM_SELECTOR));
    let caches = Caches::new(statefulsets, services, config_maps, pdbs, cronjobs, jobs, pods, claims);
    let ctx = Arc::new(Context { caches: Some(caches), ..(*ctx).clone() });
    Controller::for_stream(trigger, reader)
        .owns_stream(sts_stream)
        .owns_stream(svc_stream)
        .owns_stream(pdb_stream)
        .owns_stream(cm_stream)
        .owns_stream(cronjob_stream)
        // Jobs belong to a CronJob, not to the KvCluster: map them by their instance label.
        .watches_stream(job_stream, |job: Job| {
            let instance = job.labels().get("app.kubernetes.io/instance").cloned();
            instance.map(|name| ObjectRef::<KvCluster>::new(&name).within(&job.namespace().unwrap_or_default()))
        })
        .watches_stream(pod_stream, |_: Pod| None::<ObjectRef<KvCluster>>)
        .watches_stream(claim_stream, |_: PersistentVolumeClaim| None::<ObjectRef<KvCluster>>)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "controller event");
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
