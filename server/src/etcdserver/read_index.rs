//! Linearizable reads, batched as etcd's `linearizableReadLoop`: a read waits
//! for the next ReadIndex round to *start* after it arrived, and one round
//! serves every read that arrived before it. Under load this turns one
//! leadership confirmation (a heartbeat round with peers) per read into one
//! per batch.

use std::sync::Arc;

use openraft::ReadPolicy;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{EtcdServer, ServerError};

type Outcome = Option<Result<(), ServerError>>;

/// The round that reads arriving now will wait for.
pub(super) struct ReadLoop {
    next: Mutex<watch::Sender<Outcome>>,
    kick: Notify,
}

impl Default for ReadLoop {
    fn default() -> Self {
        Self { next: Mutex::new(watch::channel(None).0), kick: Notify::new() }
    }
}

impl EtcdServer {
    /// Waits until this member has applied everything committed before the
    /// call: the read that follows is linearizable.
    pub async fn linearizable_read_notify(&self) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.request_timeout();
        let mut rx = self.reads.next.lock().subscribe();
        self.reads.kick.notify_one();
        match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().unwrap_or(Err(ServerError::Stopped)),
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Runs ReadIndex rounds whenever reads wait (started with the server).
    pub(super) fn run_read_loop(self: &Arc<Self>) {
        let s = self.clone();
        tokio::spawn(async move {
            loop {
                s.reads.kick.notified().await;
                // Reads that subscribe from here on wait for the next round.
                let round = std::mem::replace(&mut *s.reads.next.lock(), watch::channel(None).0);
                if round.receiver_count() == 0 {
                    continue;
                }
                let outcome = s.read_index_round().await;
                let _ = round.send(Some(outcome));
            }
        });
    }

    /// One ReadIndex round: confirms leadership (through the leader when this
    /// member follows) and waits until the state machine has applied
    /// everything committed when the round started.
    async fn read_index_round(&self) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.request_timeout();
        // Leadership may move while the round is in flight: ask the new
        // leader, until the deadline (etcd's read loop retries the same way).
        let index = loop {
            let (leader, _) = self.wait_for_leader(deadline).await?;
            let asked = if leader == self.member_id {
                let fut = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
                match tokio::time::timeout_at(deadline, fut).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(openraft::errors::RaftError::APIError(_))) => Err(ServerError::NoLeader),
                    Ok(Err(openraft::errors::RaftError::Fatal(_))) => return Err(ServerError::Stopped),
                    Err(_) => return Err(ServerError::Timeout),
                }
            } else {
                self.remote_read_index(leader, deadline).await
            };
            match asked {
                Ok(index) => break index,
                Err(ServerError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(ServerError::NoLeader) => return Err(ServerError::Timeout),
                Err(e) => return Err(e),
            }
        };
        // Serve once this member has applied what the leader had committed.
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| ServerError::Timeout)
    }
}
