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
use std::time::Duration;

use futures::StreamExt;
use kvd_api::kvdpeerpb::RaftPayload;
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::time::Instant;

use super::{Peer, TypeConfig, decode, encode, unreachable};
use crate::metrics;

/// Requests sent on a stream and not answered yet, by when each went out.
#[derive(Default)]
struct InFlight {
    sent: parking_lot::Mutex<VecDeque<Instant>>,
    /// Woken when a request goes out, so that a wait with none in flight
    /// takes on its deadline.
    more: tokio::sync::Notify,
}

/// Why a stream ended before its answers did.
enum Stop {
    /// The oldest request in flight went unanswered this long.
    Stalled(Duration),
    Status(tonic::Status),
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
    let to = metrics::ToLabel { To: format!("{:x}", peer.target) };
    let inflight = Arc::new(InFlight::default());
    let (cluster_id, target) = (peer.cluster_id, peer.target);
    let requests = {
        let (inflight, to) = (inflight.clone(), to.clone());
        input.map(move |req| {
            let data = encode(&req).to_vec();
            metrics::get().peer_sent_bytes.get_or_create(&to).inc_by(data.len() as u64);
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
            metrics::get().peer_sent_failures.get_or_create(&to).inc();
            return Err(peer.failed(&s));
        }
        Err(_) => {
            metrics::get().peer_sent_failures.get_or_create(&to).inc();
            return Err(unreachable(format!("peer {target:x}: timed out")));
        }
    };
    let from = metrics::FromLabel { From: to.To.clone() };
    let stream = futures::stream::unfold(Some((peer, answers)), move |state| {
        let (inflight, to, from) = (inflight.clone(), to.clone(), from.clone());
        async move {
            let m = metrics::get();
            let (peer, mut answers) = state?;
            let answer = match next_answer(&mut answers, &inflight, ttl).await {
                Ok(Some(answer)) => answer,
                Ok(None) => return None,
                Err(stop) => {
                    m.peer_sent_failures.get_or_create(&to).inc();
                    let e = match stop {
                        Stop::Stalled(d) => unreachable(format!("peer {:x}: no answer within {d:?}", peer.target)),
                        Stop::Status(s) => peer.failed(&s),
                    };
                    return Some((Err(e), None));
                }
            };
            if let Some(sent) = inflight.sent.lock().pop_front() {
                m.peer_rtt.get_or_create(&to).observe(sent.elapsed().as_secs_f64());
            }
            m.peer_received_bytes.get_or_create(&from).inc_by(answer.data.len() as u64);
            match decode::<StreamAppendResult<TypeConfig>>(&answer.data) {
                Ok(r) => Some((Ok(r), Some((peer, answers)))),
                Err(e) => Some((Err(RPCError::Network(NetworkError::new(&e))), None)),
            }
        }
    });
    Ok(Box::pin(stream))
}

/// The next answer on the stream: waits without limit while nothing is in
/// flight, else until the oldest request has waited `ttl`.
async fn next_answer(
    answers: &mut tonic::Streaming<RaftPayload>,
    inflight: &InFlight,
    ttl: Duration,
) -> Result<Option<RaftPayload>, Stop> {
    loop {
        let oldest = inflight.sent.lock().front().copied();
        let Some(sent) = oldest else {
            // `message()` keeps what it read in `answers`, so dropping it
            // when a request goes out loses nothing.
            tokio::select! {
                r = answers.message() => return r.map_err(Stop::Status),
                () = inflight.more.notified() => continue,
            }
        };
        return match tokio::time::timeout_at(sent + ttl, answers.message()).await {
            Ok(r) => r.map_err(Stop::Status),
            Err(_) => Err(Stop::Stalled(ttl)),
        };
    }
}
