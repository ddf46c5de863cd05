//! The queue between the WAL's callers and its writer thread. Unlike a
//! channel, it takes operations that do not wake the writer: a lazy record
//! (a commit index, a truncation) waits in order behind the others until an
//! operation that needs the disk arrives, or until `idle` passes. openraft
//! saves the commit index after every commit; through a channel each such
//! record woke the writer for a write of its own: a futex wake, a context
//! switch and a `pwrite` per put at one client.
//!
//! Before it sleeps, the writer polls the queue for a while when its last
//! wait was short: a thread asleep on an idle vCPU runs ~26 µs after its
//! wake on the machine of BENCHMARKS.md, a tenth of a put at one client.
//! It polls by yielding its CPU, so runnable threads (the ones producing
//! its next work) go first. Polling for up to 200 µs made puts at one
//! client ~20% faster there and at 1,000 clients ~13%, left 100 clients
//! unchanged, and at 10 clients cost ~20% more CPU per put for the same
//! throughput; a writer whose work comes further apart sleeps at once, so
//! an idle or lightly loaded member spends nothing on it. `--wal-poll`
//! sets the limit (0 turns polling off).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long the writer polls for the next operation before it sleeps,
/// unless [`OpQueue::set_poll`] says otherwise (`--wal-poll`'s default). At
/// one client, the next put's records come ~150 µs after a write ends.
pub const DEFAULT_POLL: Duration = Duration::from_micros(200);

/// `limit` in µs, or 0 on a single CPU (where polling would only delay the
/// thread that pushes).
fn poll_limit_us(limit: Duration) -> u64 {
    let multi_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if multi_cpu { u64::try_from(limit.as_micros()).unwrap_or(u64::MAX) } else { 0 }
}

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
    /// `State::waking`, readable without the lock, for polling.
    waking: AtomicUsize,
    /// The last wait was short enough for the next one to poll first.
    poll: AtomicBool,
    /// The longest poll, in µs (0: never poll).
    poll_limit_us: AtomicU64,
}

impl<T> OpQueue<T> {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State { ops: VecDeque::new(), waking: 0, closed: false }),
            ready: Condvar::new(),
            waking: AtomicUsize::new(0),
            poll: AtomicBool::new(true),
            poll_limit_us: AtomicU64::new(poll_limit_us(DEFAULT_POLL)),
        }
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
            self.waking.store(s.waking, Ordering::Release);
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
        self.waking.store(0, Ordering::Release);
        s.ops.drain(..).map(|(op, _)| op).collect()
    }

    /// The writer's wait for work: returns the oldest operation once one
    /// that wakes is queued, or when a round of `idle` ends with lazy ones
    /// queued (so they wait at most `idle`, and the writer of an idle
    /// member wakes every `idle` to look); None once the queue is closed and
    /// empty. Polls for up to the poll limit first if the last wait was no
    /// longer.
    pub(super) fn wait(&self, idle: Duration) -> Option<T> {
        let start = Instant::now();
        let limit = Duration::from_micros(self.poll_limit_us.load(Ordering::Relaxed));
        if self.poll.load(Ordering::Relaxed) {
            while self.waking.load(Ordering::Acquire) == 0 && start.elapsed() < limit {
                std::thread::yield_now();
            }
        }
        let mut s = self.state.lock();
        while s.waking == 0 && !s.closed {
            if self.ready.wait_for(&mut s, idle).timed_out() && !s.ops.is_empty() {
                break;
            }
        }
        self.poll.store(start.elapsed() <= limit, Ordering::Relaxed);
        self.pop(&mut s)
    }

    /// The next queued operation, if any, without waiting.
    pub(super) fn try_pop(&self) -> Option<T> {
        self.pop(&mut self.state.lock())
    }

    fn pop(&self, s: &mut State<T>) -> Option<T> {
        let (op, wakes) = s.ops.pop_front()?;
        if wakes {
            s.waking -= 1;
            self.waking.store(s.waking, Ordering::Release);
        }
        Some(op)
    }

    /// The longest the writer polls before it sleeps (zero: never).
    pub(super) fn set_poll(&self, limit: Duration) {
        self.poll_limit_us.store(poll_limit_us(limit), Ordering::Relaxed);
    }

    /// Whether the next wait polls first.
    #[cfg(test)]
    fn polls(&self) -> bool {
        self.poll.load(Ordering::Relaxed)
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

    /// The writer polls only while its work comes soon after its last wait:
    /// a long wait turns polling off, and a short one turns it back on.
    #[test]
    fn polling_follows_how_soon_work_comes() {
        let q = Arc::new(OpQueue::new());
        if q.poll_limit_us.load(Ordering::Relaxed) == 0 {
            return; // one CPU: never polls
        }
        // A wait that finds work queued is short, unless this thread is
        // preempted inside it (a loaded machine): allow a few tries.
        let short_wait_polls = |q: &OpQueue<i32>| {
            (0..20).any(|_| {
                q.push(1).unwrap();
                q.wait(Duration::from_secs(3600)) == Some(1) && q.polls()
            })
        };
        assert!(q.polls());
        assert!(short_wait_polls(&q), "work was waiting: keep polling");
        let q2 = q.clone();
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            q2.push(2).unwrap();
        });
        assert_eq!(q.wait(Duration::from_secs(3600)), Some(2));
        pusher.join().unwrap();
        assert!(!q.polls(), "work came 30 ms later: sleep at once next time");
        assert!(short_wait_polls(&q), "work was waiting again: poll again");
        // A zero limit turns polling off, however soon work comes.
        q.set_poll(Duration::ZERO);
        assert!(!short_wait_polls(&q), "polling is off");
        q.set_poll(DEFAULT_POLL);
        assert!(short_wait_polls(&q));
        // A lazy op alone does not end a poll: it waits for the idle time.
        q.push_lazy(5).unwrap();
        let start = Instant::now();
        assert_eq!(q.wait(Duration::from_millis(50)), Some(5));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(!q.polls());
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
