//! What one HTTP/2 connection's calls may hold in memory at once, so that
//! one client cannot take the server's memory (issue 23, item 2).
//!
//! - Request messages: a call reserves its message's declared length before
//!   it reads the message, and gives it back once the message is decoded. A
//!   message that does not fit is refused at once, not made to wait: the
//!   DATA of a waiting call would sit in the connection's flow-control
//!   window, which the calls being read need, and the connection could
//!   stall for good. Only a connection with [`REQUEST_BYTES`] of messages
//!   being read at once meets this.
//! - Calls and their replies: a call that has its request takes a slot
//!   before it runs and keeps it until its reply is handed to h2. New calls
//!   wait (their requests are read by then, so waiting holds no window)
//!   while [`CALLS`] calls hold slots, or while the connection's replies
//!   hold [`REPLY_BYTES`]: either bytes waiting for the client's
//!   flow-control window (counted only once two replies wait, so that one
//!   large reply, a big LIST, holds up nobody), or bytes handed to h2 that
//!   the socket has not taken (a client that opens its window but does not
//!   read). A client that reads nothing therefore holds at most that much,
//!   plus the replies of the calls already running.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Bytes of request messages one client connection's calls may be reading
/// at once (beyond one message, which is always let in).
pub const REQUEST_BYTES: usize = 64 << 20;
/// Bytes of replies past which the connection's new calls wait.
pub const REPLY_BYTES: usize = 64 << 20;
/// Calls of one connection that run or send their replies at once.
pub const CALLS: usize = 1024;

/// One connection's budget, shared by its calls.
#[derive(Default)]
pub struct Budget {
    /// Bytes of request messages the connection may be reading at once.
    request_limit: usize,
    requests: AtomicUsize,
    /// Bytes of replies waiting for the client's window, and how many
    /// replies they are.
    replies: AtomicUsize,
    waiting: AtomicUsize,
    calls: AtomicUsize,
    /// Reply bytes handed to h2, and bytes the socket has taken.
    queued: AtomicU64,
    written: AtomicU64,
    /// Calls waiting for a slot.
    sleepers: AtomicUsize,
    room: Notify,
}

impl Budget {
    /// A budget of `request_limit` bytes of request messages.
    pub fn new(request_limit: usize) -> Arc<Budget> {
        Arc::new(Budget { request_limit, ..Budget::default() })
    }

    /// Reserves `n` bytes for a request message, unless the connection's
    /// messages already hold the limit (one message always fits).
    pub fn try_request(self: &Arc<Self>, n: usize) -> Option<Held> {
        let limit = self.request_limit;
        let update = |u: usize| (u == 0 || u + n <= limit).then_some(u + n);
        self.requests.fetch_update(Ordering::AcqRel, Ordering::Acquire, update).ok()?;
        Some(Held { budget: self.clone(), kind: Kind::Request, n })
    }

    /// Bytes of request messages held now.
    pub fn request_bytes(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Bytes of request messages the connection may be reading at once.
    pub fn request_limit(&self) -> usize {
        self.request_limit
    }

    /// Whether the replies leave room for another call.
    fn replies_have_room(&self) -> bool {
        let unflushed = self.queued.load(Ordering::Acquire).saturating_sub(self.written.load(Ordering::Acquire));
        let waiting = self.replies.load(Ordering::Acquire) < REPLY_BYTES || self.waiting.load(Ordering::Acquire) < 2;
        unflushed < REPLY_BYTES as u64 && waiting
    }

    /// Waits for a call slot (see the module doc).
    pub async fn slot(self: &Arc<Self>) -> Slot {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.replies_have_room()
                && self
                    .calls
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| (c < CALLS).then_some(c + 1))
                    .is_ok()
            {
                return Slot { budget: self.clone() };
            }
            self.sleepers.fetch_add(1, Ordering::AcqRel);
            room.await;
            self.sleepers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counts `n` bytes of a reply that waits for the client's window.
    pub fn reply(self: &Arc<Self>, n: usize) -> Held {
        self.replies.fetch_add(n, Ordering::AcqRel);
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Held { budget: self.clone(), kind: Kind::Reply, n }
    }

    /// `n` bytes of a reply were handed to h2.
    pub fn queued(&self, n: usize) {
        self.queued.fetch_add(n as u64, Ordering::AcqRel);
    }

    /// The socket took `n` bytes.
    fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::AcqRel);
        self.wake();
    }

    fn wake(&self) {
        if self.sleepers.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    fn give_back(&self, kind: Kind, n: usize) {
        match kind {
            Kind::Request => self.requests.fetch_sub(n, Ordering::AcqRel),
            Kind::Reply => self.replies.fetch_sub(n, Ordering::AcqRel),
        };
        self.wake();
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
        if n > 0 {
            self.budget.give_back(self.kind, n);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Kind::Reply = self.kind {
            self.budget.waiting.fetch_sub(1, Ordering::AcqRel);
        }
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
        self.budget.wake();
    }
}

/// A connection's I/O that tells its budget how much the socket took.
pub struct CountWrites<T> {
    io: T,
    budget: Arc<Budget>,
}

impl<T> CountWrites<T> {
    pub fn new(io: T, budget: Arc<Budget>) -> Self {
        CountWrites { io, budget }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.budget.wrote(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.budget.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_refused_past_the_budget_but_one_always_fits() {
        let b = Budget::new(REQUEST_BYTES);
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
    async fn one_large_waiting_reply_holds_up_no_call() {
        let b = Budget::new(REQUEST_BYTES);
        let _big = b.reply(REPLY_BYTES * 4);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), b.slot()).await;
        assert!(slot.is_ok(), "one large reply held up a call");
    }

    #[tokio::test]
    async fn calls_wait_while_replies_wait_for_the_window() {
        let b = Budget::new(REQUEST_BYTES);
        let _small = b.reply(1);
        let mut reply = b.reply(REPLY_BYTES);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.slot().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call ran while the replies were over budget");
        reply.release(2);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        drop(slot);
        drop(reply);
        drop(_small);
        assert_eq!(b.replies.load(Ordering::Acquire), 0);
        assert_eq!(b.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn calls_wait_while_the_socket_takes_nothing() {
        let b = Budget::new(REQUEST_BYTES);
        b.queued(REPLY_BYTES);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.slot().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call ran while 64 MiB of replies sat unwritten");
        b.wrote(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn calls_past_the_slot_count_wait_for_a_slot() {
        let b = Budget::new(REQUEST_BYTES);
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
