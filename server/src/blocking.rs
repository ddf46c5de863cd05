//! Long synchronous work called from a task, off the runtime's workers.
//!
//! A LIST of a large prefix reads and decodes hundreds of megabytes in one
//! call, a second or more of CPU. On a worker thread that holds up every
//! task queued behind it there: with kvd on one CPU (one worker), writes
//! waited for whole LISTs (under two unpaginated LISTs of 100,000 objects
//! of 2 KiB, a put's p99 was 422 ms and its max 942 ms, against etcd's
//! 145 ms, whose goroutines are preempted). [`long`] runs such work with
//! `block_in_place`: the worker's other tasks move to another thread
//! meanwhile, and the kernel shares the CPU between the two (put p99
//! 22 ms). The mvcc layer reads a range's values through it
//! (`mvcc/kvstore.rs`).
//!
//! Such calls run one per CPU at a time, as they did on the workers: side
//! by side on one CPU, LISTs took longer and held their results at once.
//! (Encoding the reply the same way, tried too, took kvd's RSS from 0.9 to
//! 3.7 GiB under those LISTs: memory allocated on one thread and freed on
//! another, and the replies no longer paced by the worker's sending.)

use std::sync::OnceLock;

use parking_lot::{Condvar, Mutex};
use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which takes long, without holding a runtime worker when
/// called on one (elsewhere, and on a single-threaded runtime, it just
/// runs). Other futures of the calling task wait for it, as for any
/// synchronous call.
pub fn long<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| {
            let _turn = Turn::take();
            f()
        }),
        _ => f(),
    }
}

/// The long calls running, and the CPUs this process may use.
struct Turns {
    running: Mutex<usize>,
    freed: Condvar,
    cpus: usize,
}

fn turns() -> &'static Turns {
    static TURNS: OnceLock<Turns> = OnceLock::new();
    TURNS.get_or_init(|| Turns {
        running: Mutex::new(0),
        freed: Condvar::new(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// One long call's turn, given back when dropped (on a panic too).
struct Turn;

impl Turn {
    fn take() -> Turn {
        let t = turns();
        let mut running = t.running.lock();
        while *running >= t.cpus {
            t.freed.wait(&mut running);
        }
        *running += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let t = turns();
        *t.running.lock() -= 1;
        t.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::long;
    use std::time::{Duration, Instant};

    /// While one task is in a long call, another on the same (one) worker
    /// goes on: its timer fires on time, not after the call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn other_tasks_go_on_during_a_long_call() {
        let ticker = tokio::spawn(async {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(50)).await;
            start.elapsed()
        });
        tokio::task::yield_now().await;
        let busy = tokio::spawn(async { long(|| std::thread::sleep(Duration::from_millis(600))) });
        let late = ticker.await.unwrap();
        busy.await.unwrap();
        assert!(late < Duration::from_millis(450), "the timer waited for the long call: {late:?}");
    }

    /// No more long calls run at once than the process has CPUs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn long_calls_run_one_per_cpu() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls: Vec<_> = (0..2 * super::turns().cpus + 2)
            .map(|_| {
                let (now, most) = (now.clone(), most.clone());
                tokio::spawn(async move {
                    long(|| {
                        most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=super::turns().cpus).contains(&most), "{most} long calls at once");
    }

    #[tokio::test]
    async fn on_a_single_threaded_runtime_it_just_runs() {
        assert_eq!(long(|| 7), 7);
    }

    #[test]
    fn outside_a_runtime_it_just_runs() {
        assert_eq!(long(|| 7), 7);
    }
}
