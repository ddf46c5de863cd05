//! Watch: the watchable store, as etcd's `mvcc/watchable_store.go`.
//!
//! Apply hands every revision's events to [`WatchHub::notify`], which passes
//! them to the *synced* watchers (those that have seen everything before)
//! without ever blocking: each stream has a bounded channel, and a watcher
//! whose stream is full becomes *unsynced*. Unsynced watchers (also new ones
//! with a past start revision) are caught up from the backend by the sync task
//! ([`sync`]), a window of revisions at a time, and rejoin the synced set once
//! they reach the last notified revision. So a stalled client never holds up
//! writers or other watchers, memory stays bounded, and every watcher still
//! sees every event once, in revision order.

mod spec;
mod subscription;
mod sync;

pub use spec::{WatchError, WatchMsg, WatchSpec};
pub use subscription::{Delivery, Subscription};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kvd_api::mvccpb::Event;
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::mvcc::KvStore;

pub type StreamId = u64;
type WatcherKey = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Created, its "created" response not yet on the stream.
    Pending,
    Synced,
    Unsynced,
}

struct Watcher {
    stream: StreamId,
    watch_id: i64,
    spec: WatchSpec,
    /// The next revision this watcher needs.
    min_rev: i64,
    state: State,
}

struct Stream {
    tx: mpsc::Sender<WatchMsg>,
    ids: HashMap<i64, WatcherKey>,
    next_id: i64,
    /// A progress request waits for the stream's watchers to sync.
    progress_pending: bool,
}

#[derive(Default)]
struct Inner {
    next_key: WatcherKey,
    next_stream: StreamId,
    watchers: HashMap<WatcherKey, Watcher>,
    streams: HashMap<StreamId, Stream>,
    /// Synced single-key watchers by key, and synced range watchers.
    synced_keys: HashMap<Vec<u8>, HashSet<WatcherKey>>,
    synced_ranges: HashSet<WatcherKey>,
    unsynced: HashSet<WatcherKey>,
    /// The last revision apply notified.
    notified_rev: i64,
}

impl Inner {
    fn set_state(&mut self, key: WatcherKey, state: State) {
        let Some(w) = self.watchers.get_mut(&key) else { return };
        let old = std::mem::replace(&mut w.state, state);
        if old == state {
            return;
        }
        let (single, k) = (w.spec.is_single_key(), w.spec.key.clone());
        match old {
            State::Synced if single => {
                if let Some(s) = self.synced_keys.get_mut(&k) {
                    s.remove(&key);
                    if s.is_empty() {
                        self.synced_keys.remove(&k);
                    }
                }
            }
            State::Synced => {
                self.synced_ranges.remove(&key);
            }
            State::Unsynced => {
                self.unsynced.remove(&key);
            }
            State::Pending => {}
        }
        match state {
            State::Synced if single => {
                self.synced_keys.entry(k).or_default().insert(key);
            }
            State::Synced => {
                self.synced_ranges.insert(key);
            }
            State::Unsynced => {
                self.unsynced.insert(key);
            }
            State::Pending => {}
        }
    }

    fn remove(&mut self, key: WatcherKey) -> Option<Watcher> {
        self.set_state(key, State::Pending);
        let w = self.watchers.remove(&key)?;
        if let Some(s) = self.streams.get_mut(&w.stream) {
            s.ids.remove(&w.watch_id);
        }
        Some(w)
    }

    /// Sends a stream's deferred progress once none of its watchers is behind.
    fn flush_progress(&mut self, stream: StreamId) {
        let behind = self.unsynced.iter().any(|k| self.watchers.get(k).is_some_and(|w| w.stream == stream));
        let rev = self.notified_rev;
        if let Some(s) = self.streams.get_mut(&stream)
            && s.progress_pending
            && !behind
            && s.tx.try_send(WatchMsg::Progress { watch_id: -1, revision: rev }).is_ok()
        {
            s.progress_pending = false;
        }
    }
}

pub struct WatchHub {
    store: Arc<KvStore>,
    inner: Mutex<Inner>,
    /// Wakes the sync task early (a watcher fell behind or was created behind).
    wake: tokio::sync::Notify,
    count: std::sync::atomic::AtomicUsize,
}

/// Revisions the sync task reads from the backend per round.
const SYNC_WINDOW: i64 = 1000;

impl WatchHub {
    pub fn new(store: Arc<KvStore>) -> Arc<Self> {
        let rev = store.rev();
        Arc::new(Self {
            store,
            inner: Mutex::new(Inner { notified_rev: rev, ..Default::default() }),
            wake: tokio::sync::Notify::new(),
            count: Default::default(),
        })
    }

    /// Watchers, streams and unsynced (slow) watchers, for the metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.inner.lock();
        (inner.watchers.len(), inner.streams.len(), inner.unsynced.len())
    }

    /// True when any watcher exists (apply collects events only then).
    pub fn has_watchers(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Registers a stream whose messages go to `tx`.
    pub fn open_stream(&self, tx: mpsc::Sender<WatchMsg>) -> StreamId {
        let mut inner = self.inner.lock();
        inner.next_stream += 1;
        let id = inner.next_stream;
        inner.streams.insert(id, Stream { tx, ids: HashMap::new(), next_id: 0, progress_pending: false });
        id
    }

    /// Removes a stream and all its watchers.
    pub fn close_stream(&self, stream: StreamId) {
        let mut inner = self.inner.lock();
        if let Some(s) = inner.streams.remove(&stream) {
            for key in s.ids.into_values() {
                inner.set_state(key, State::Pending);
                inner.watchers.remove(&key);
                self.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Creates a watcher on `stream` (`requested_id` 0 = pick one). It stays
    /// silent until [`activate`](Self::activate), so the caller can put its
    /// "created" response on the stream first. Returns the watch id and the
    /// revision the watcher has seen up to.
    pub fn watch(&self, stream: StreamId, requested_id: i64, spec: WatchSpec) -> Result<(i64, i64), WatchError> {
        let mut inner = self.inner.lock();
        let rev = inner.notified_rev;
        let s = inner.streams.get_mut(&stream).ok_or(WatchError::StreamClosed)?;
        let watch_id = if requested_id != 0 {
            if s.ids.contains_key(&requested_id) {
                return Err(WatchError::DuplicateId);
            }
            requested_id
        } else {
            while s.ids.contains_key(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        };
        inner.next_key += 1;
        let key = inner.next_key;
        if let Some(s) = inner.streams.get_mut(&stream) {
            s.ids.insert(watch_id, key);
        }
        let min_rev = if spec.start_revision <= 0 { rev + 1 } else { spec.start_revision };
        inner.watchers.insert(key, Watcher { stream, watch_id, spec, min_rev, state: State::Pending });
        self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((watch_id, rev))
    }

    /// Starts delivering to a watcher created by [`watch`](Self::watch).
    pub fn activate(&self, stream: StreamId, watch_id: i64) {
        let mut inner = self.inner.lock();
        let Some(key) = inner.streams.get(&stream).and_then(|s| s.ids.get(&watch_id)).copied() else { return };
        let behind = inner.watchers.get(&key).is_some_and(|w| w.min_rev <= inner.notified_rev);
        inner.set_state(key, if behind { State::Unsynced } else { State::Synced });
        if behind {
            self.wake.notify_one();
        }
    }

    /// Cancels a watcher; false when the stream has no such watch.
    pub fn cancel(&self, stream: StreamId, watch_id: i64) -> bool {
        let mut inner = self.inner.lock();
        let Some(key) = inner.streams.get(&stream).and_then(|s| s.ids.get(&watch_id)).copied() else {
            return false;
        };
        inner.remove(key);
        self.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        inner.flush_progress(stream);
        true
    }

    /// A client's progress request: answered (watch id -1, the last notified
    /// revision) once every watcher of the stream is synced.
    pub fn request_progress(&self, stream: StreamId) {
        let mut inner = self.inner.lock();
        if let Some(s) = inner.streams.get_mut(&stream) {
            s.progress_pending = true;
        }
        inner.flush_progress(stream);
    }

    /// Apply: revision `rev` is published. `events` is None when apply did not
    /// collect them (nobody watched when it started); watchers created since
    /// then catch up from the backend.
    pub fn notify(&self, rev: i64, events: Option<Vec<Event>>) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if rev <= inner.notified_rev {
            return;
        }
        inner.notified_rev = rev;
        let Some(events) = events else {
            let due: Vec<WatcherKey> = inner
                .synced_ranges
                .iter()
                .chain(inner.synced_keys.values().flatten())
                .copied()
                .filter(|k| inner.watchers.get(k).is_some_and(|w| w.min_rev <= rev))
                .collect();
            if !due.is_empty() {
                for k in due {
                    inner.set_state(k, State::Unsynced);
                }
                self.wake.notify_one();
            }
            return;
        };
        // Group the events per interested watcher, in order.
        let mut per: HashMap<WatcherKey, Vec<Event>> = HashMap::new();
        for e in &events {
            let key = e.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
            let singles = inner.synced_keys.get(key).into_iter().flatten();
            for wk in singles.chain(inner.synced_ranges.iter()) {
                if let Some(w) = inner.watchers.get(wk)
                    && w.min_rev <= rev
                    && w.spec.matches(e)
                {
                    per.entry(*wk).or_default().push(e.clone());
                }
            }
        }
        let mut fell_behind = false;
        for (wk, evs) in per {
            let Some(w) = inner.watchers.get_mut(&wk) else { continue };
            let Some(tx) = inner.streams.get(&w.stream).map(|s| s.tx.clone()) else { continue };
            let msg = WatchMsg::Events {
                watch_id: w.watch_id,
                revision: rev,
                events: evs,
                prev_kv: w.spec.prev_kv,
                fragment: w.spec.fragment,
            };
            match tx.try_send(msg) {
                Ok(()) => w.min_rev = rev + 1,
                Err(TrySendError::Full(_)) => {
                    // Everything before `rev` was delivered; resume there from the backend.
                    w.min_rev = rev;
                    inner.set_state(wk, State::Unsynced);
                    fell_behind = true;
                }
                Err(TrySendError::Closed(_)) => {
                    inner.remove(wk);
                    self.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        if fell_behind {
            self.wake.notify_one();
        }
    }

    /// The store's state was replaced (a raft snapshot was installed): every
    /// watcher catches up from the new backend (or learns it was compacted).
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.notified_rev = self.store.rev();
        let keys: Vec<WatcherKey> =
            inner.watchers.iter().filter(|(_, w)| w.state == State::Synced).map(|(k, _)| *k).collect();
        for k in keys {
            inner.set_state(k, State::Unsynced);
        }
        self.wake.notify_one();
    }

    /// Sends a progress notification to every synced watcher that asked for
    /// them (`progress_notify`), as etcd does every progress interval.
    pub fn notify_progress(&self) {
        let inner = self.inner.lock();
        let rev = inner.notified_rev;
        for w in inner.watchers.values().filter(|w| w.state == State::Synced && w.spec.progress_notify) {
            if let Some(s) = inner.streams.get(&w.stream) {
                let _ = s.tx.try_send(WatchMsg::Progress { watch_id: w.watch_id, revision: rev });
            }
        }
    }

    /// Runs the sync task and the periodic progress notifications until the
    /// process stops.
    pub fn start(self: &Arc<Self>, progress_interval: Duration) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut progress = tokio::time::interval(progress_interval);
            progress.tick().await;
            loop {
                tokio::select! {
                    _ = hub.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = progress.tick() => hub.notify_progress(),
                }
                let h = hub.clone();
                // Reading the backend blocks; keep it off the async workers.
                match tokio::task::spawn_blocking(move || h.sync_round()).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "watch catch-up read failed; retrying"),
                    Err(e) => tracing::error!(error = %e, "watch sync task failed"),
                    Ok(Ok(())) => {}
                }
            }
        });
    }
}
