//! The forwarder against a stand-in leader over real gRPC: batches go on
//! one `ForwardStream` to a leader that has it, as `ForwardBatch` calls to
//! one that has not, and one by one to one that has neither.

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
    /// ForwardStream calls, and the batches they carried.
    streams: usize,
    streamed: Vec<Vec<Bytes>>,
    refused_streams: usize,
}

/// A leader that takes its time over each call or batch (so writes queue
/// behind those on the way); if `stream` is false, it predates
/// `ForwardStream`, and if `batch` is false, `ForwardBatch` too. With
/// `refuse`, it answers every streamed batch with that error.
#[derive(Default)]
struct StandIn {
    batch: bool,
    stream: bool,
    refuse: Option<(tonic::Code, &'static str)>,
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
    type ForwardStreamStream = futures::stream::BoxStream<'static, Result<ForwardAnswer, Status>>;
    async fn forward_stream(
        &self,
        req: Request<tonic::Streaming<ForwardBatchRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        use futures::StreamExt;
        if !self.stream {
            self.seen.lock().refused_streams += 1;
            return unimplemented();
        }
        self.seen.lock().streams += 1;
        let (seen, refuse) = (self.seen.clone(), self.refuse);
        let answers = req.into_inner().then(move |batch| {
            let seen = seen.clone();
            async move {
                let batch = batch?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                seen.lock().streamed.push(batch.requests);
                Ok(match refuse {
                    Some((code, message)) => ForwardAnswer { code: code as u32, message: message.into() },
                    None => ForwardAnswer::default(),
                })
            }
        });
        Ok(Response::new(answers.boxed()))
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

/// Forwards `n` writes at once to `leader`; returns each one's outcome and
/// what the leader saw.
async fn forward_to(leader: StandIn, n: usize) -> (Vec<Result<(), ServerError>>, Seen) {
    let seen = leader.seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::service::Routes::new(PeerServer::new(leader)).into_axum_router();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let client = PeerClient::new(channel);
    let forwarder = Forwarder::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let writes = (0..n).map(|i| {
        let (f, c) = (forwarder.clone(), client.clone());
        tokio::spawn(async move { f.forward(c, 1, 2, Bytes::from(format!("write-{i}")), deadline).await })
    });
    let mut outcomes = Vec::new();
    for w in writes.collect::<Vec<_>>() {
        outcomes.push(w.await.unwrap());
    }
    server.abort();
    (outcomes, std::mem::take(&mut *seen.lock()))
}

/// Forwards `n` writes at once to a stand-in leader, each handed over;
/// returns what it saw.
async fn forward_many(batch: bool, stream: bool, n: usize) -> Seen {
    let (outcomes, seen) = forward_to(StandIn { batch, stream, ..Default::default() }, n).await;
    for o in outcomes {
        o.expect("every write is handed over");
    }
    seen
}

/// Every write, each exactly once, whichever calls carried them.
fn assert_each_once(seen: &Seen, n: usize) {
    let mut all: Vec<Bytes> = seen
        .forwards
        .iter()
        .chain(seen.batches.iter().flatten())
        .chain(seen.streamed.iter().flatten())
        .cloned()
        .collect();
    all.sort();
    let mut want: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("write-{i}"))).collect();
    want.sort();
    assert_eq!(all, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_busy_batches_travel_together_on_one_stream() {
    let n = 40;
    let seen = forward_many(true, true, n).await;
    assert_each_once(&seen, n);
    assert_eq!(seen.streams, 1, "one link carries every batch");
    assert!(seen.forwards.is_empty() && seen.batches.is_empty(), "a write went as a call of its own");
    // At most MAX_IN_FLIGHT batches at once: the writes that waited went together.
    assert!(seen.streamed.len() < n, "{} batches for {n} writes", seen.streamed.len());
    assert!(seen.streamed.iter().any(|b| b.len() > 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_the_stream_gets_forward_batch_calls() {
    let n = 40;
    let seen = forward_many(true, false, n).await;
    assert_each_once(&seen, n);
    // Tried once, then remembered.
    assert_eq!(seen.refused_streams, 1);
    let calls = seen.forwards.len() + seen.batches.len();
    assert!(calls < n, "{calls} calls for {n} writes");
    assert!(seen.batches.iter().any(|b| b.len() > 1));
    assert_eq!(seen.refused_batches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_forward_batch_gets_them_one_by_one() {
    let n = 40;
    let seen = forward_many(false, false, n).await;
    assert!(seen.refused_batches > 0, "no batch was tried");
    assert!(seen.batches.is_empty());
    assert_eq!(seen.forwards.len(), n);
    assert_each_once(&seen, n);
}

/// A batch the leader refuses fails each of its writes with the error etcd
/// gives for a proposal that did not reach a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_on_the_stream_fails_its_writes_as_etcd_would() {
    let no_leader = (tonic::Code::Unavailable, "etcdserver: no leader");
    let leader = StandIn { batch: true, stream: true, refuse: Some(no_leader), ..Default::default() };
    let (outcomes, seen) = forward_to(leader, 5).await;
    assert_eq!(seen.streams, 1);
    assert!(outcomes.iter().all(|o| matches!(o, Err(ServerError::NoLeader))), "{outcomes:?}");
    let leader = StandIn {
        batch: true,
        stream: true,
        refuse: Some((tonic::Code::FailedPrecondition, "etcdserver: not leader")),
        ..Default::default()
    };
    let (outcomes, _) = forward_to(leader, 5).await;
    assert!(outcomes.iter().all(|o| matches!(o, Err(ServerError::LeaderChanged))), "{outcomes:?}");
}
