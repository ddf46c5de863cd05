//! Writes a follower hands to the leader, batched: a caller that finds
//! fewer than `MAX_IN_FLIGHT` senders at work starts one, which sends what
//! is queued (its write among it) as one batch, then the writes that
//! arrived meanwhile, until none is left. The batches go on the member's
//! link to the leader ([`super::forward_link`]), one long call that a
//! hundred clients' writes share instead of a hundred HTTP/2 streams on
//! both members. A leader that predates the link gets them as
//! `ForwardBatch` calls, and one that predates `ForwardBatch` (both are
//! older kvd, during a rolling upgrade) answers Unimplemented, and that
//! batch goes one write at a time.
//!
//! A batch's outcome is every write's outcome: a failure or timeout means
//! each write may or may not have been proposed, as for a single forward.
//! A failure is answered with etcd's codes for a proposal that did not
//! reach a leader, which clients retry: Unavailable "etcdserver: no leader"
//! when the leader says it knows none, "etcdserver: leader changed" for
//! anything else (the member it was sent to is not the leader any more, or
//! cannot be reached), and "etcdserver: request timed out" past the
//! request's deadline.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use kvd_api::kvdpeerpb::peer_client::PeerClient;
use kvd_api::kvdpeerpb::{ForwardBatchRequest, ForwardRequest};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::ServerError;
use super::forward_link::{Answer, Link, Usable};

/// Batches on the way to the leader at once, per member.
const MAX_IN_FLIGHT: usize = 4;
/// Writes in one batch at most.
const MAX_BATCH: usize = 128;
/// Bytes in one batch at most, but for its first write (a write alone may
/// be as large as a request may be): well under the peer message limit.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// How a forwarded write ended (cloned to every write of a batch).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Outcome {
    Sent,
    TimedOut,
    /// The leader's (or the channel's) answer.
    Failed(tonic::Code, String),
}

impl Outcome {
    pub(super) fn failed(s: &tonic::Status) -> Outcome {
        Outcome::Failed(s.code(), s.message().to_string())
    }
}

/// The error a client gets for a forward that failed (`code`, `message`
/// from the leader or the channel to it).
fn failed_as_etcd(leader: u64, code: tonic::Code, message: &str) -> ServerError {
    tracing::debug!(leader = %format_args!("{leader:x}"), ?code, message, "forwarding a write to the leader failed");
    if code == tonic::Code::Unavailable && message == ServerError::NoLeader.to_string() {
        ServerError::NoLeader
    } else {
        ServerError::LeaderChanged
    }
}

struct Pending {
    data: Bytes,
    deadline: Instant,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    in_flight: usize,
}

/// The queue of writes for the leader, shared by this member's requests.
#[derive(Clone, Default)]
pub(crate) struct Forwarder {
    queue: Arc<parking_lot::Mutex<Queue>>,
    /// The link to the leader the last batch went to.
    link: Arc<parking_lot::Mutex<Option<Link>>>,
}

impl Forwarder {
    /// Hands `data` to the leader behind `client` before `deadline`.
    pub(crate) async fn forward(
        &self,
        client: PeerClient<Channel>,
        cluster_id: u64,
        leader: u64,
        data: Bytes,
        deadline: Instant,
    ) -> Result<(), ServerError> {
        let (done, outcome) = oneshot::channel();
        let send = {
            let mut q = self.queue.lock();
            q.waiting.push_back(Pending { data, deadline, done });
            let send = q.in_flight < MAX_IN_FLIGHT;
            q.in_flight += usize::from(send);
            send
        };
        if send {
            // In a task: a caller that goes away (its client cancelled) must
            // not take the batch, and the others' writes in it, with it.
            let this = self.clone();
            tokio::spawn(async move { this.drain(client, cluster_id, leader).await });
        }
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(Outcome::Sent)) => Ok(()),
            Ok(Ok(Outcome::TimedOut)) | Err(_) => Err(ServerError::Timeout),
            Ok(Ok(Outcome::Failed(code, m))) => Err(failed_as_etcd(leader, code, &m)),
            // The batch's sender went away (the member is stopping).
            Ok(Err(_)) => Err(ServerError::LeaderChanged),
        }
    }

    /// Sends batches until the queue is empty, then releases its slot (the
    /// check and the release under the lock a new write takes to queue
    /// itself: it either finds the slot free or is picked up here).
    async fn drain(self, client: PeerClient<Channel>, cluster_id: u64, leader: u64) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                if q.waiting.is_empty() {
                    q.in_flight -= 1;
                    return;
                }
                let n = batch_len(q.waiting.iter().map(|p| p.data.len()));
                q.waiting.drain(..n).collect::<Vec<_>>()
            };
            self.send_batch(&client, cluster_id, leader, batch).await;
        }
    }

    /// One batch: on the link to `leader`, or, to a leader without it, as a
    /// `ForwardBatch` (or one `Forward` per write); tells every write.
    async fn send_batch(&self, client: &PeerClient<Channel>, cluster_id: u64, leader: u64, batch: Vec<Pending>) {
        let deadline = batch.iter().map(|p| p.deadline).min().unwrap_or_else(Instant::now);
        crate::metrics::get().forward_batch.observe(batch.len() as f64);
        let (requests, dones): (Vec<Bytes>, Vec<oneshot::Sender<Outcome>>) =
            batch.into_iter().map(|p| (p.data, p.done)).unzip();
        let outcome = match self.linked(client, cluster_id, leader, &requests, deadline).await {
            Some(outcome) => outcome,
            None => match <[Bytes; 1]>::try_from(requests) {
                Ok([one]) => single(client, cluster_id, one, deadline).await,
                Err(requests) => many(client, cluster_id, requests, deadline).await,
            },
        };
        for d in dones {
            let _ = d.send(outcome.clone());
        }
    }

    /// The batch's outcome on the link to `leader` (opened if there is none
    /// that can take it), or None if the leader has no link to offer.
    async fn linked(
        &self,
        client: &PeerClient<Channel>,
        cluster_id: u64,
        leader: u64,
        requests: &[Bytes],
        deadline: Instant,
    ) -> Option<Outcome> {
        let answer = {
            let mut link = self.link.lock();
            match link.as_ref().map_or(Usable::No, |l| l.usable(leader)) {
                Usable::NoStream => return None,
                Usable::No => *link = None,
                Usable::Yes => {}
            }
            let batch = ForwardBatchRequest { cluster_id, requests: requests.to_vec() };
            link.get_or_insert_with(|| Link::open(client.clone(), leader)).send(batch, deadline)
        };
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Answer::Done(outcome))) => Some(outcome),
            Ok(Ok(Answer::NoStream)) => None,
            // The link's task went away (the member is stopping).
            Ok(Err(_)) => Some(Outcome::failed(&tonic::Status::unavailable("forward link closed"))),
            Err(_) => Some(Outcome::TimedOut),
        }
    }
}

/// How many of the queued writes (of these sizes, oldest first) go in the
/// next batch: up to `MAX_BATCH` and `MAX_BATCH_BYTES`, and always the first.
fn batch_len(sizes: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    sizes
        .take(MAX_BATCH)
        .enumerate()
        .take_while(|(i, size)| {
            bytes += size;
            *i == 0 || bytes <= MAX_BATCH_BYTES
        })
        .count()
}

/// One `ForwardBatch` (or, to a leader without it, one `Forward` per
/// write), bounded by the batch's earliest deadline.
async fn many(client: &PeerClient<Channel>, cluster_id: u64, requests: Vec<Bytes>, deadline: Instant) -> Outcome {
    let mut c = client.clone();
    let call = c.forward_batch(ForwardBatchRequest { cluster_id, requests: requests.clone() });
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(_)) => Outcome::Sent,
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            let mut last = Outcome::Sent;
            for r in requests {
                last = single(client, cluster_id, r, deadline).await;
                if last != Outcome::Sent {
                    break;
                }
            }
            last
        }
        Ok(Err(s)) => Outcome::failed(&s),
        Err(_) => Outcome::TimedOut,
    }
}

async fn single(client: &PeerClient<Channel>, cluster_id: u64, request: Bytes, deadline: Instant) -> Outcome {
    let mut c = client.clone();
    match tokio::time::timeout_at(deadline, c.forward(ForwardRequest { cluster_id, request })).await {
        Ok(Ok(_)) => Outcome::Sent,
        Ok(Err(s)) => Outcome::failed(&s),
        Err(_) => Outcome::TimedOut,
    }
}

#[cfg(test)]
#[path = "forwarder_tests.rs"]
mod tests;
