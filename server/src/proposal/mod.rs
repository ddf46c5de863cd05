//! Proposals: a unique request id per proposal and a waiter registered under
//! it, triggered by Apply with the request's result (etcd's `wait` and `idutil`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::apply::{ApplyError, ApplyOutput};

pub type ApplyResult = Result<ApplyOutput, ApplyError>;

/// Request ids: the member id's low 16 bits, then milliseconds since the epoch,
/// then a counter, so ids stay unique across members and restarts.
pub struct IdGenerator {
    next: AtomicU64,
}

impl IdGenerator {
    pub fn new(member_id: u64) -> Self {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let prefix = (member_id & 0xffff) << 48;
        let suffix = (ms & 0xff_ffff_ffff) << 8;
        Self { next: AtomicU64::new(prefix | suffix) }
    }

    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Waiters keyed by request id.
#[derive(Default)]
pub struct Wait {
    waiters: Mutex<HashMap<u64, oneshot::Sender<ApplyResult>>>,
}

impl Wait {
    /// Registers a waiter for `id`.
    pub fn register(&self, id: u64) -> oneshot::Receiver<ApplyResult> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        rx
    }

    /// Delivers `id`'s result, if anyone still waits for it.
    pub fn trigger(&self, id: u64, r: ApplyResult) {
        if let Some(tx) = self.waiters.lock().remove(&id) {
            let _ = tx.send(r);
        }
    }

    /// Forgets a waiter (timeout or cancellation).
    pub fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }

    pub fn pending(&self) -> usize {
        self.waiters.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_carry_member() {
        let g = IdGenerator::new(0xabcd);
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert_eq!(a >> 48, 0xabcd);
    }

    #[tokio::test]
    async fn trigger_reaches_only_its_waiter() {
        let w = Wait::default();
        let rx1 = w.register(1);
        let rx2 = w.register(2);
        w.trigger(2, Err(ApplyError::KeyNotFound));
        assert_eq!(rx2.await.unwrap().unwrap_err(), ApplyError::KeyNotFound);
        w.cancel(1);
        assert!(rx1.await.is_err());
        assert_eq!(w.pending(), 0);
    }
}
