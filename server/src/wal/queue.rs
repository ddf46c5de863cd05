//! The queue between the WAL's callers and its writer thread. Unlike a
//! channel, it takes operations that do not wake the writer: a lazy record
//! (a commit index, a truncation) waits in order behind the others until an
//! operation that needs the disk arrives, or until `idle` passes. openraft
//! saves the commit index after every commit; through a channel each such
//! record woke the writer for a write of its own: a futex wake, a context
//! switch and a `pwrite` per put at one client.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

struct State<T> {
    /// Queued operations, oldest first, each with whether it wakes the writer.
    ops: VecDeque<(T, bool)>,
    /// How many of `ops` wake the writer.
    waking: usize,
    /// Every handle is gone (the writer stops once `ops` is empty), or the
    /// writer has stopped: nothing more is queued.
    closed: bool,
}

pub(super) struct OpQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> OpQueue<T> {
    pub(super) fn new() -> Self {
        Self { state: Mutex::new(State { ops: VecDeque::new(), waking: 0, closed: false }), ready: Condvar::new() }
    }

    /// Queues `op` and wakes the writer; gives it back if the queue is closed.
    pub(super) fn push(&self, op: T) -> Result<(), T> {
        self.push_with(op, true)
    }

    /// Queues `op` behind the others without waking the writer.
    pub(super) fn push_lazy(&self, op: T) -> Result<(), T> {
        self.push_with(op, false)
    }

    fn push_with(&self, op: T, wakes: bool) -> Result<(), T> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(op);
        }
        s.ops.push_back((op, wakes));
        if wakes {
            s.waking += 1;
            drop(s);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// No more operations will come: the writer drains what is queued, then stops.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    /// The writer stops early: refuses what comes from now on and returns
    /// what is still queued, for the writer to fail.
    pub(super) fn close_and_take(&self) -> Vec<T> {
        let mut s = self.state.lock();
        s.closed = true;
        s.waking = 0;
        s.ops.drain(..).map(|(op, _)| op).collect()
    }

    /// The writer's wait for work: returns the oldest operation once one
    /// that wakes is queued, or when a round of `idle` ends with lazy ones
    /// queued (so they wait at most `idle`, and the writer of an idle
    /// member wakes every `idle` to look); None once the queue is closed and
    /// empty.
    pub(super) fn wait(&self, idle: Duration) -> Option<T> {
        let mut s = self.state.lock();
        while s.waking == 0 && !s.closed {
            if self.ready.wait_for(&mut s, idle).timed_out() && !s.ops.is_empty() {
                break;
            }
        }
        Self::pop(&mut s)
    }

    /// The next queued operation, if any, without waiting.
    pub(super) fn try_pop(&self) -> Option<T> {
        Self::pop(&mut self.state.lock())
    }

    fn pop(s: &mut State<T>) -> Option<T> {
        let (op, wakes) = s.ops.pop_front()?;
        s.waking -= usize::from(wakes);
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn lazy_ops_keep_their_place_behind_the_op_that_wakes() {
        let q = OpQueue::new();
        q.push_lazy(1).unwrap();
        q.push(2).unwrap();
        q.push_lazy(3).unwrap();
        assert_eq!(q.wait(Duration::from_secs(3600)), Some(1));
        assert_eq!(q.try_pop(), Some(2));
        assert_eq!(q.try_pop(), Some(3));
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn lazy_ops_alone_wait_for_the_idle_time() {
        let q = Arc::new(OpQueue::new());
        q.push_lazy(7).unwrap();
        let start = Instant::now();
        assert_eq!(q.wait(Duration::from_millis(200)), Some(7));
        assert!(start.elapsed() >= Duration::from_millis(200), "woken after {:?}", start.elapsed());
        // An op that wakes ends the wait at once, long before the idle time.
        q.push_lazy(8).unwrap();
        let q2 = q.clone();
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            q2.push(9).unwrap();
        });
        let start = Instant::now();
        assert_eq!(q.wait(Duration::from_secs(20)), Some(8));
        assert!(start.elapsed() < Duration::from_secs(10), "the push did not wake the wait: {:?}", start.elapsed());
        assert_eq!(q.try_pop(), Some(9));
        pusher.join().unwrap();
    }

    #[test]
    fn a_queue_closed_by_its_reader_hands_back_what_is_queued() {
        let q = OpQueue::new();
        q.push(1).unwrap();
        q.push_lazy(2).unwrap();
        assert_eq!(q.close_and_take(), vec![1, 2]);
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.wait(Duration::from_secs(3600)), None);
    }

    #[test]
    fn a_closed_queue_drains_then_ends_and_refuses_more() {
        let q = OpQueue::new();
        q.push_lazy(1).unwrap();
        q.close();
        assert_eq!(q.push(2), Err(2));
        assert_eq!(q.wait(Duration::from_secs(3600)), Some(1));
        assert_eq!(q.wait(Duration::from_secs(3600)), None);
    }
}
