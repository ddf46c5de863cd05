//! Test helpers: KvCluster builders and an API-server stand-in on
//! `tower_test::mock`. A scenario is a list of expected calls (method, path,
//! what the body must contain) with canned answers; it fails on an unexpected
//! call and when an expected call never comes.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::controller::{Context, State};
use crate::crd::{KvCluster, KvClusterSpec};
use crate::naming::FINALIZER;

/// A KvCluster `name` in namespace `ns` with `replicas` and defaults, but
/// for TLS: plain text (`tls.mode: Disabled`), which the tests of other
/// features read most simply; [`kvcluster_default_tls`] has the default.
pub fn kvcluster(name: &str, replicas: i32) -> KvCluster {
    let mut kc = kvcluster_default_tls(name, replicas);
    kc.spec.tls = Some(crate::crd::TlsSpec { mode: Some(crate::crd::TlsMode::Disabled), ..Default::default() });
    kc
}

/// A KvCluster `name` in namespace `ns` with `replicas` and every default.
pub fn kvcluster_default_tls(name: &str, replicas: i32) -> KvCluster {
    let spec: KvClusterSpec = serde_json::from_value(json!({ "replicas": replicas })).expect("spec");
    let mut kc = KvCluster::new(name, spec);
    kc.meta_mut().namespace = Some("ns".into());
    kc.meta_mut().uid = Some("0000-1111".into());
    kc.meta_mut().generation = Some(1);
    kc
}

/// The same KvCluster carrying our finalizer.
pub fn finalized(mut kc: KvCluster) -> KvCluster {
    kc.finalizers_mut().push(FINALIZER.into());
    kc
}

/// The answer of one expected call.
pub enum Reply {
    /// 200 with this body.
    Json(Value),
    /// 200 echoing the request body back.
    Echo,
    /// 404 NotFound.
    NotFound,
}

/// One expected call.
pub struct Expect {
    pub method: http::Method,
    /// Path (and query) must start with this.
    pub path: String,
    /// Every string must occur in the request body.
    pub body_contains: Vec<String>,
    pub reply: Reply,
}

impl Expect {
    pub fn get(path: impl Into<String>, reply: Reply) -> Self {
        Expect { method: http::Method::GET, path: path.into(), body_contains: vec![], reply }
    }

    pub fn patch(path: impl Into<String>, contains: &[&str]) -> Self {
        Expect {
            method: http::Method::PATCH,
            path: path.into(),
            body_contains: contains.iter().map(|s| s.to_string()).collect(),
            reply: Reply::Echo,
        }
    }

    pub fn post(path: impl Into<String>, contains: &[&str]) -> Self {
        Expect { method: http::Method::POST, reply: Reply::Echo, ..Expect::patch(path, contains) }
    }

    /// A DELETE answered with a success Status.
    pub fn delete(path: impl Into<String>, contains: &[&str]) -> Self {
        let ok = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200 });
        Expect { method: http::Method::DELETE, reply: Reply::Json(ok), ..Expect::patch(path, contains) }
    }
}

/// An empty list answer.
pub fn empty_list() -> Reply {
    Reply::Json(json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": [] }))
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The API-server stand-in.
pub struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    /// Serves `calls` in order; the returned task fails on any mismatch.
    pub fn run(mut self, calls: Vec<Expect>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for (i, exp) in calls.into_iter().enumerate() {
                let (req, send) = self.0.next_request().await.expect("service not called");
                let uri = req.uri().to_string();
                assert_eq!(req.method(), exp.method, "call {i}: {uri}");
                assert!(uri.starts_with(&exp.path), "call {i}: got {uri}, want {}", exp.path);
                let body = req.into_body().collect_bytes().await.expect("body");
                let text = String::from_utf8_lossy(&body).to_string();
                for needle in &exp.body_contains {
                    assert!(text.contains(needle.as_str()), "call {i} ({uri}): body lacks {needle:?}: {text}");
                }
                let resp = match exp.reply {
                    Reply::Json(v) => Response::builder().body(Body::from(serde_json::to_vec(&v).expect("json"))),
                    Reply::Echo => Response::builder().body(Body::from(body.to_vec())),
                    Reply::NotFound => {
                        let st = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                         "message": "not found", "reason": "NotFound", "code": 404 });
                        Response::builder().status(404).body(Body::from(serde_json::to_vec(&st).expect("json")))
                    }
                };
                send.send_response(resp.expect("response"));
            }
        })
    }
}

impl Context {
    /// A context whose client talks to an `ApiServerVerifier`.
    pub fn test() -> (Arc<Self>, ApiServerVerifier) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let state = State::default();
        let reporter = kube::runtime::events::Reporter { controller: "kvd-operator".into(), instance: None };
        let ctx = Context {
            recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
            client,
            diagnostics: state.diagnostics.clone(),
            metrics: state.metrics.clone(),
            etcd: crate::etcd::EtcdClient::new("", Duration::from_millis(200)),
            defragged: Default::default(),
            tls_clients: Default::default(),
            failures: Default::default(),
            caches: None,
        };
        (Arc::new(ctx), ApiServerVerifier(handle))
    }
}

/// Waits for a scenario, failing if it does not finish in time.
pub async fn finish(task: tokio::task::JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(r) => r.expect("scenario failed"),
        Err(_) => panic!("scenario timed out: an expected call never came"),
    }
}

/// `name` as the API server would return it.
pub fn as_json(kc: &KvCluster) -> Value {
    let mut v = serde_json::to_value(kc).expect("json");
    v["metadata"]["resourceVersion"] = json!("1");
    let _ = kc.name_any();
    v
}
