//! The leader's half of the replication stream (`AppendStream` on the peer
//! service, served by `rpc/peer.rs`): openraft's AppendEntries to one
//! follower as one long gRPC call, as etcd's msgapp stream carries them.
//! A request goes out as soon as openraft makes it, without waiting for the
//! answers to those before it, and the follower answers each in order; a
//! put then costs each follower one message each way on an open HTTP/2
//! stream instead of a call of its own (headers, a stream, trailers).
//!
//! Every request must be answered within openraft's hard TTL of its going
//! out, the bound each unary AppendEntries had; a stream that stalls longer
//! ends as "unreachable", and openraft opens another from what the follower
//! acknowledged. An idle stream waits without limit: HTTP/2 pings find a
//! dead connection (see `network.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use kvd_api::kvdpeerpb::RaftPayload;
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use super::{Peer, TypeConfig, decode, encode, unreachable};
use crate::inflight::within_oldest_deadline;
use crate::metrics;

/// Requests sent on a stream and not answered yet, by when each went out.
#[derive(Default)]
struct InFlight {
    sent: parking_lot::Mutex<VecDeque<Instant>>,
    /// Woken when a request goes out, so that a wait with none in flight
    /// takes on its deadline.
    more: tokio::sync::Notify,
}

/// The peer metrics of one stream, looked up once (not per message).
struct PeerMetrics {
    sent_bytes: Counter,
    received_bytes: Counter,
    failures: Counter,
    rtt: Histogram,
}

impl PeerMetrics {
    fn of(target: u64) -> PeerMetrics {
        let m = metrics::get();
        let to = metrics::ToLabel { To: format!("{target:x}") };
        let from = metrics::FromLabel { From: to.To.clone() };
        PeerMetrics {
            sent_bytes: m.peer_sent_bytes.get_or_create(&to).clone(),
            received_bytes: m.peer_received_bytes.get_or_create(&from).clone(),
            failures: m.peer_sent_failures.get_or_create(&to).clone(),
            rtt: m.peer_rtt.get_or_create(&to).clone(),
        }
    }
}

type Answers<'s> = BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// Opens the stream to `peer` and sends `input` on it as openraft makes
/// the requests; the answers come back in order.
pub(super) async fn open<'s, S>(
    peer: &'s mut Peer,
    input: S,
    option: RPCOption,
) -> Result<Answers<'s>, RPCError<TypeConfig>>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let pm = PeerMetrics::of(peer.target);
    let inflight = Arc::new(InFlight::default());
    let (cluster_id, target) = (peer.cluster_id, peer.target);
    let requests = {
        let (inflight, sent_bytes) = (inflight.clone(), pm.sent_bytes.clone());
        input.map(move |req| {
            let data = encode(&req).to_vec();
            sent_bytes.inc_by(data.len() as u64);
            inflight.sent.lock().push_back(Instant::now());
            inflight.more.notify_one();
            RaftPayload { cluster_id, data, to: target }
        })
    };
    let ttl = option.hard_ttl();
    let client = peer.client().map_err(unreachable)?;
    let answers = match tokio::time::timeout(ttl, client.append_stream(requests)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            peer.streams = false;
            tracing::info!(peer = %format_args!("{target:x}"), "peer predates the replication stream; sending appends one by one");
            return Err(unreachable(format!("peer {target:x} has no replication stream")));
        }
        Ok(Err(s)) => {
            pm.failures.inc();
            return Err(peer.failed(&s));
        }
        Err(_) => {
            pm.failures.inc();
            return Err(unreachable(format!("peer {target:x}: timed out")));
        }
    };
    let stream = futures::stream::unfold(Some((peer, answers, inflight, pm)), move |state| async move {
        let (peer, mut answers, inflight, pm) = state?;
        let oldest = || inflight.sent.lock().front().map(|sent| *sent + ttl);
        let answer = match within_oldest_deadline(oldest, &inflight.more, answers.message()).await {
            Some(Ok(Some(answer))) => answer,
            Some(Ok(None)) => return None,
            stop => {
                pm.failures.inc();
                let e = match stop {
                    Some(Err(s)) => peer.failed(&s),
                    _ => unreachable(format!("peer {:x}: no answer within {ttl:?}", peer.target)),
                };
                return Some((Err(e), None));
            }
        };
        if let Some(sent) = inflight.sent.lock().pop_front() {
            pm.rtt.observe(sent.elapsed().as_secs_f64());
        }
        pm.received_bytes.inc_by(answer.data.len() as u64);
        match decode::<StreamAppendResult<TypeConfig>>(&answer.data) {
            Ok(r) => Some((Ok(r), Some((peer, answers, inflight, pm)))),
            Err(e) => Some((Err(RPCError::Network(NetworkError::new(&e))), None)),
        }
    });
    Ok(Box::pin(stream))
}
