//! The forwarder against a stand-in leader over real gRPC: batches reach a
//! leader that has `ForwardBatch`, and go one by one to one that has not.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvd_api::kvdpeerpb::peer_client::PeerClient;
use kvd_api::kvdpeerpb::peer_server::{Peer, PeerServer};
use kvd_api::kvdpeerpb::*;
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::*;

#[test]
fn batches_are_bounded_by_count_and_bytes_but_never_empty() {
    assert_eq!(batch_len([10; 3].into_iter()), 3);
    assert_eq!(batch_len([10; 1000].into_iter()), MAX_BATCH);
    // One write larger than the byte bound still goes, alone.
    assert_eq!(batch_len([MAX_BATCH_BYTES + 1, 1].into_iter()), 1);
    assert_eq!(batch_len([MAX_BATCH_BYTES / 2, MAX_BATCH_BYTES / 2, 1].into_iter()), 2);
    assert_eq!(batch_len(std::iter::empty()), 0);
}

/// What the stand-in leader received: each call's writes, in arrival order.
#[derive(Default)]
struct Seen {
    forwards: Vec<Bytes>,
    batches: Vec<Vec<Bytes>>,
    refused_batches: usize,
}

/// A leader that takes its time over each call (so writes queue behind the
/// calls on the way) and, if `batch` is false, predates `ForwardBatch`.
struct StandIn {
    batch: bool,
    seen: Arc<Mutex<Seen>>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this stand-in"))
}

#[tonic::async_trait]
impl Peer for StandIn {
    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<ForwardResponse>, Status> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.seen.lock().forwards.push(req.into_inner().request);
        Ok(Response::new(ForwardResponse {}))
    }
    async fn forward_batch(&self, req: Request<ForwardBatchRequest>) -> Result<Response<ForwardResponse>, Status> {
        if !self.batch {
            self.seen.lock().refused_batches += 1;
            return unimplemented();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.seen.lock().batches.push(req.into_inner().requests);
        Ok(Response::new(ForwardResponse {}))
    }
    async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        unimplemented()
    }
    type AppendStreamStream = futures::stream::Empty<Result<RaftPayload, Status>>;
    async fn append_stream(
        &self,
        _: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        unimplemented()
    }
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        unimplemented()
    }
    async fn pre_vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        unimplemented()
    }
    async fn transfer_leader(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        unimplemented()
    }
    async fn install_snapshot(
        &self,
        _: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        unimplemented()
    }
    async fn cluster_op(&self, _: Request<ClusterOpRequest>) -> Result<Response<ClusterOpResponse>, Status> {
        unimplemented()
    }
    async fn cluster_info(&self, _: Request<ClusterInfoRequest>) -> Result<Response<ClusterInfoResponse>, Status> {
        unimplemented()
    }
    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        unimplemented()
    }
    async fn lease_renew(&self, _: Request<LeaseRenewRequest>) -> Result<Response<LeaseRenewResponse>, Status> {
        unimplemented()
    }
    async fn lease_time_to_live(
        &self,
        _: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        unimplemented()
    }
}

/// Forwards `n` writes at once to a stand-in leader; returns what it saw.
async fn forward_many(batch: bool, n: usize) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::service::Routes::new(PeerServer::new(StandIn { batch, seen: seen.clone() })).into_axum_router();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let client = PeerClient::new(channel);
    let forwarder = Forwarder::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let writes = (0..n).map(|i| {
        let (f, c) = (forwarder.clone(), client.clone());
        tokio::spawn(async move { f.forward(c, 1, 2, Bytes::from(format!("write-{i}")), deadline).await })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap().expect("every write is handed over");
    }
    server.abort();
    std::mem::take(&mut *seen.lock())
}

/// Every write, each exactly once, whichever calls carried them.
fn assert_each_once(seen: &Seen, n: usize) {
    let mut all: Vec<Bytes> = seen.forwards.iter().chain(seen.batches.iter().flatten()).cloned().collect();
    all.sort();
    let mut want: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("write-{i}"))).collect();
    want.sort();
    assert_eq!(all, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_busy_calls_travel_in_batches() {
    let n = 40;
    let seen = forward_many(true, n).await;
    assert_each_once(&seen, n);
    // At most MAX_IN_FLIGHT calls at once: the writes that waited went together.
    let calls = seen.forwards.len() + seen.batches.len();
    assert!(calls < n, "{calls} calls for {n} writes");
    assert!(seen.batches.iter().any(|b| b.len() > 1));
    assert_eq!(seen.refused_batches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_forward_batch_gets_them_one_by_one() {
    let n = 40;
    let seen = forward_many(false, n).await;
    assert!(seen.refused_batches > 0, "no batch was tried");
    assert!(seen.batches.is_empty());
    assert_eq!(seen.forwards.len(), n);
    assert_each_once(&seen, n);
}
