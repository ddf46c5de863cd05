//! A follower's link to the leader for forwarded writes: one long
//! `ForwardStream` call that carries the forwarder's batches in order and
//! brings their answers back in order, so that a forwarded write costs a
//! message each way on an open HTTP/2 stream instead of a call of its own.
//!
//! A link serves one leader. It closes when its call fails or ends, when
//! the leader leaves a batch unanswered past that batch's deadline (the
//! batches still on it then fail as timed out: each may or may not have been
//! proposed, as for any forward), or when the leader predates the stream
//! (it answers Unimplemented, and the forwarder sends that leader's
//! batches as `ForwardBatch` calls for a while).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use kvd_api::kvdpeerpb::peer_client::PeerClient;
use kvd_api::kvdpeerpb::{ForwardAnswer, ForwardBatchRequest};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::forwarder::Outcome;

/// How long a leader found without the stream is sent `ForwardBatch`
/// calls before the stream is tried again (it may have been upgraded).
const RETRY_STREAM: Duration = Duration::from_secs(30);

/// How a batch sent on a link ended.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Answer {
    Done(Outcome),
    /// The leader has no `ForwardStream`: the batch was not proposed.
    NoStream,
}

#[derive(Default)]
struct Waiting {
    /// The batches on the way, oldest first, with their deadlines.
    batches: VecDeque<(Instant, oneshot::Sender<Answer>)>,
    /// When the link closed, and why (what any batch sent after gets).
    closed: Option<(Instant, Answer)>,
}

#[derive(Default)]
struct Shared {
    waiting: parking_lot::Mutex<Waiting>,
    /// Woken when a batch goes out, so that a wait with none on the way
    /// takes on its deadline.
    more: Notify,
}

/// One leader's stream.
pub(super) struct Link {
    pub(super) leader: u64,
    requests: mpsc::UnboundedSender<ForwardBatchRequest>,
    shared: Arc<Shared>,
}

impl Link {
    /// Opens a link to `leader` behind `client` (the call is made by a task
    /// of its own, which answers the batches).
    pub(super) fn open(client: PeerClient<Channel>, leader: u64) -> Link {
        let (requests, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(client, rx, shared.clone()));
        Link { leader, requests, shared }
    }

    /// Whether batches for `leader` may go on this link, or, if it closed
    /// finding no stream there, whether they still go as calls.
    pub(super) fn usable(&self, leader: u64) -> Usable {
        if self.leader != leader {
            return Usable::No;
        }
        match &self.shared.waiting.lock().closed {
            None => Usable::Yes,
            Some((at, Answer::NoStream)) if at.elapsed() < RETRY_STREAM => Usable::NoStream,
            Some(_) => Usable::No,
        }
    }

    /// Sends `batch`, due by `deadline`; its answer comes on the receiver.
    pub(super) fn send(&self, batch: ForwardBatchRequest, deadline: Instant) -> oneshot::Receiver<Answer> {
        let (done, answer) = oneshot::channel();
        let mut w = self.shared.waiting.lock();
        if let Some((_, why)) = &w.closed {
            let _ = done.send(why.clone());
            return answer;
        }
        // In the queue before on the stream, under the lock: answers are
        // matched to batches by their order.
        w.batches.push_back((deadline, done));
        if self.requests.send(batch).is_err() {
            // The task has ended; it closes the link, and this batch with it.
            return answer;
        }
        drop(w);
        self.shared.more.notify_one();
        answer
    }
}

/// What a link can do for a leader.
#[derive(Debug, PartialEq)]
pub(super) enum Usable {
    Yes,
    /// The leader has no stream: send it calls.
    NoStream,
    /// Open another link.
    No,
}

/// The link's task: makes the call, answers every batch in order, and, when
/// the call ends, closes the link and fails what is still on it.
async fn run(mut client: PeerClient<Channel>, rx: mpsc::UnboundedReceiver<ForwardBatchRequest>, shared: Arc<Shared>) {
    let call = client.forward_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    let ended = match within_deadlines(&shared, call).await {
        None => Answer::Done(Outcome::TimedOut),
        Some(Err(s)) if s.code() == tonic::Code::Unimplemented => Answer::NoStream,
        Some(Err(s)) => Answer::Done(Outcome::failed(&s)),
        Some(Ok(answers)) => answer_all(answers.into_inner(), &shared).await,
    };
    let mut w = shared.waiting.lock();
    for (_, done) in w.batches.drain(..) {
        let _ = done.send(ended.clone());
    }
    w.closed = Some((Instant::now(), ended));
}

/// Hands each answer to its batch until the call ends; how it ended.
async fn answer_all(mut answers: tonic::Streaming<ForwardAnswer>, shared: &Shared) -> Answer {
    loop {
        let a = match within_deadlines(shared, answers.message()).await {
            None => return Answer::Done(Outcome::TimedOut),
            Some(Err(s)) => return Answer::Done(Outcome::failed(&s)),
            Some(Ok(None)) => {
                let s = tonic::Status::unavailable("the leader ended the forward stream");
                return Answer::Done(Outcome::failed(&s));
            }
            Some(Ok(Some(a))) => a,
        };
        let outcome = match a.code {
            0 => Outcome::Sent,
            code => Outcome::Failed(tonic::Code::from_i32(code as i32), a.message),
        };
        let Some((_, done)) = shared.waiting.lock().batches.pop_front() else {
            let s = tonic::Status::internal("the leader answered a batch that was not sent");
            return Answer::Done(Outcome::failed(&s));
        };
        let _ = done.send(Answer::Done(outcome));
    }
}

/// `fut`, unless the oldest batch on the way reaches its deadline first
/// (None); with none on the way, without limit.
async fn within_deadlines<F: std::future::Future>(shared: &Shared, fut: F) -> Option<F::Output> {
    let oldest = || shared.waiting.lock().batches.front().map(|(deadline, _)| *deadline);
    crate::inflight::within_oldest_deadline(oldest, &shared.more, fut).await
}
