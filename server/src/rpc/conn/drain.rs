//! A graceful stop of the ports (SIGTERM, as a pod is deleted or rolled):
//! the listeners stop accepting, every HTTP/2 connection sends GOAWAY (a
//! gRPC client starts its next calls on another member, and retries by
//! itself a call the server never began), HTTP/1 connections close after
//! their current request, and calls in flight finish. The process waits for
//! the connections to close, up to a deadline (watch streams stay open until
//! the end), and only then stops raft: a write that was accepted is
//! answered instead of cut off with a connection reset, when the client
//! cannot tell whether it was applied.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The stop signal, and the count of what has not finished since.
pub struct Drain {
    /// Set before the signal is sent: what a connection reads on its hot
    /// path, without the watch channel's shared lock.
    flag: Arc<AtomicBool>,
    signal: watch::Sender<bool>,
    open: mpsc::Sender<()>,
    closed: mpsc::Receiver<()>,
}

/// What a listener or a connection holds: the signal, and (while held) a
/// place in the count the drain waits for.
#[derive(Clone)]
pub struct Watch {
    flag: Arc<AtomicBool>,
    signal: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (open, closed) = mpsc::channel(1);
        Drain { flag: Arc::new(AtomicBool::new(false)), signal, open, closed }
    }

    /// A watch for a listener, which clones it for each connection.
    pub fn watch(&self) -> Watch {
        Watch { flag: self.flag.clone(), signal: self.signal.subscribe(), _open: self.open.clone() }
    }

    /// Signals every listener and connection, then waits until each has
    /// finished or `within` has passed; returns whether all finished.
    pub async fn drain(self, within: Duration) -> bool {
        let Drain { flag, signal, open, mut closed } = self;
        flag.store(true, Ordering::Release);
        signal.send_replace(true);
        drop(open);
        // recv() answers None once every Watch (each holding a sender) is gone.
        tokio::time::timeout(within, closed.recv()).await.is_ok()
    }
}

impl Watch {
    /// Completes once the drain has begun.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.signal.clone();
        async move {
            // An error means the Drain is gone: the process is ending anyway.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Whether the drain has begun (one atomic load).
    pub fn is_stopping(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_drain_waits_for_every_watch_and_no_longer_than_asked() {
        let drain = Drain::new();
        let w = drain.watch();
        assert!(!w.is_stopping());
        let conn = w.clone();
        let task = tokio::spawn(async move {
            conn.stopping().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(conn);
        });
        drop(w);
        assert!(drain.drain(Duration::from_secs(5)).await, "a connection that closes is waited for");
        task.await.expect("task");

        let drain = Drain::new();
        let stuck = drain.watch();
        let t0 = std::time::Instant::now();
        assert!(!drain.drain(Duration::from_millis(100)).await, "one that stays open is not");
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(stuck.is_stopping());
    }
}
