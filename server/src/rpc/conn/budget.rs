//! What one HTTP/2 connection's calls may hold in memory at once, so that
//! one client cannot take the server's memory (issue 23, item 2).
//!
//! - Request messages: a call reserves its message's declared length before
//!   it reads the message. A message that does not fit is refused at once,
//!   not made to wait: the DATA of a waiting call would sit in the
//!   connection's flow-control window, which the calls being read need, and
//!   the connection could stall for good.
//! - Calls and their replies: a call that has its request takes a slot
//!   before it runs and keeps it until its reply has gone out within the
//!   client's flow-control window. While the connection's replies waiting
//!   for that window pass [`REPLY_BYTES`], or [`CALLS`] calls hold slots,
//!   new calls wait (their requests are read by then, so waiting holds no
//!   window). A client that never opens its window therefore holds at most
//!   that much, plus the replies of the calls already running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes of request messages one connection's calls may hold at once
/// (beyond one message, which is always let in).
pub const REQUEST_BYTES: usize = 64 << 20;
/// Bytes of replies waiting for the client's window past which the
/// connection's new calls wait.
pub const REPLY_BYTES: usize = 64 << 20;
/// Calls of one connection that run or wait to send their replies at once.
pub const CALLS: usize = 1024;

/// One connection's budget, shared by its calls.
#[derive(Default)]
pub struct Budget {
    requests: AtomicUsize,
    replies: AtomicUsize,
    calls: AtomicUsize,
    room: Notify,
}

impl Budget {
    pub fn new() -> Arc<Budget> {
        Arc::new(Budget::default())
    }

    /// Reserves `n` bytes for a request message, unless the connection's
    /// messages already hold [`REQUEST_BYTES`] (one message always fits).
    pub fn try_request(self: &Arc<Self>, n: usize) -> Option<Held> {
        self.requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u == 0 || u + n <= REQUEST_BYTES).then_some(u + n))
            .ok()?;
        Some(Held { budget: self.clone(), kind: Kind::Request, n })
    }

    /// Bytes of request messages held now.
    pub fn request_bytes(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Waits for a call slot: fewer than [`CALLS`] calls hold one, and the
    /// replies waiting for the client's window are under [`REPLY_BYTES`].
    pub async fn slot(self: &Arc<Self>) -> Slot {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.replies.load(Ordering::Acquire) < REPLY_BYTES
                && self
                    .calls
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| (c < CALLS).then_some(c + 1))
                    .is_ok()
            {
                return Slot { budget: self.clone() };
            }
            room.await;
        }
    }

    /// Counts `n` bytes of a reply that waits for the client's window.
    pub fn reply(self: &Arc<Self>, n: usize) -> Held {
        self.replies.fetch_add(n, Ordering::AcqRel);
        Held { budget: self.clone(), kind: Kind::Reply, n }
    }

    fn give_back(&self, kind: Kind, n: usize) {
        if n == 0 {
            return;
        }
        match kind {
            Kind::Request => self.requests.fetch_sub(n, Ordering::AcqRel),
            Kind::Reply => self.replies.fetch_sub(n, Ordering::AcqRel),
        };
        self.room.notify_waiters();
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Request,
    Reply,
}

/// Bytes held against a [`Budget`] until dropped (or given back early).
pub struct Held {
    budget: Arc<Budget>,
    kind: Kind,
    n: usize,
}

impl Held {
    /// Gives back `n` of the bytes (a reply's part that went out).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.n);
        self.n -= n;
        self.budget.give_back(self.kind, n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.kind, self.n);
    }
}

/// A call slot ([`Budget::slot`]), given back when dropped.
pub struct Slot {
    budget: Arc<Budget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.calls.fetch_sub(1, Ordering::AcqRel);
        self.budget.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_refused_past_the_budget_but_one_always_fits() {
        let b = Budget::new();
        let big = b.try_request(REQUEST_BYTES * 2).expect("one message always fits");
        assert!(b.try_request(1).is_none(), "nothing more while it is held");
        drop(big);
        let half = b.try_request(REQUEST_BYTES / 2).unwrap();
        let rest = b.try_request(REQUEST_BYTES / 2).unwrap();
        assert!(b.try_request(1).is_none());
        drop(half);
        assert_eq!(b.request_bytes(), REQUEST_BYTES / 2);
        drop(rest);
        assert_eq!(b.request_bytes(), 0);
    }

    #[tokio::test]
    async fn calls_wait_while_replies_wait_for_the_window() {
        let b = Budget::new();
        let mut reply = b.reply(REPLY_BYTES);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.slot().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call ran while the replies were over budget");
        reply.release(1);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        drop(slot);
        drop(reply);
        assert_eq!(b.replies.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn calls_past_the_slot_count_wait_for_a_slot() {
        let b = Budget::new();
        let mut slots = Vec::new();
        for _ in 0..CALLS {
            slots.push(b.slot().await);
        }
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.slot().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call took a slot past the count");
        slots.pop();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
