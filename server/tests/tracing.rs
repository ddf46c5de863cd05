//! Distributed tracing: with etcd's tracing flags, kvd exports a span for each
//! layer a write crosses to an OTLP collector (a real gRPC one, in the test).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::PutRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<BTreeSet<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.insert(s.name);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_path_spans_reach_an_otlp_collector() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let dir = tempfile::tempdir().unwrap();
    let kvd = Proc::kvd_ready(
        &dir.path().join("d"),
        &["--experimental-enable-distributed-tracing", "--experimental-distributed-tracing-address", &addr.to_string()],
    )
    .await;
    let mut kv = kvd.kv().await;
    for i in 0..5 {
        kv.put(PutRequest { key: format!("k{i}").into(), value: b"v".to_vec(), ..Default::default() }).await.unwrap();
    }
    let want = ["api", "quota", "preflight", "propose", "wal_append", "wal_fsync", "apply", "backend_commit"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = collector.spans.lock().unwrap().clone();
        if want.iter().all(|w| got.contains(*w)) {
            break;
        }
        assert!(Instant::now() < deadline, "spans missing; got {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
