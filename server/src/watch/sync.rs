//! Catching unsynced watchers up from the backend (etcd's syncWatchers).
//!
//! One round: take the unsynced watchers and the last notified revision under
//! the hub lock; outside it, read one window of revisions from the backend
//! (buffered writes included) and offer each watcher its events; then, under
//! the lock again, advance the watchers that took them and move those that
//! reached the notified revision back to the synced set. Watchers whose next
//! revision was compacted get a compacted response and are removed.

use kvd_api::mvccpb::event::EventType;
use kvd_api::mvccpb::{Event, KeyValue};
use prost::Message;
use tokio::sync::mpsc::error::TrySendError;

use super::{SYNC_WINDOW, State, WatchHub, WatchMsg, WatchSpec, WatcherKey};
use crate::backend::Table;
use crate::mvcc::{MvccError, Revision};

struct Job {
    key: WatcherKey,
    watch_id: i64,
    spec: WatchSpec,
    min_rev: i64,
    tx: tokio::sync::mpsc::Sender<WatchMsg>,
}

impl WatchHub {
    /// One catch-up round; see the module comment.
    pub(super) fn sync_round(&self) -> Result<(), MvccError> {
        let compact = self.store.compact_rev();
        let (notified, jobs) = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
            let mut jobs = Vec::new();
            let mut compacted = Vec::new();
            for k in inner.unsynced.iter() {
                let Some(w) = inner.watchers.get(k) else { continue };
                let Some(s) = inner.streams.get(&w.stream) else { continue };
                if w.min_rev < compact {
                    let msg = WatchMsg::Compacted { watch_id: w.watch_id, compact_revision: compact };
                    // A full stream gets it in a later round.
                    if !matches!(s.tx.try_send(msg), Err(TrySendError::Full(_))) {
                        compacted.push((*k, w.stream));
                    }
                    continue;
                }
                if s.tx.capacity() == 0 {
                    // A stream whose client reads nothing: reading events it
                    // cannot take would only cost a backend scan per round.
                    continue;
                }
                jobs.push(Job {
                    key: *k,
                    watch_id: w.watch_id,
                    spec: w.spec.clone(),
                    min_rev: w.min_rev,
                    tx: s.tx.clone(),
                });
            }
            for (k, stream) in compacted {
                inner.remove(k);
                self.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                inner.flush_progress(stream);
            }
            (inner.notified_rev, jobs)
        };
        if jobs.is_empty() {
            return Ok(());
        }
        let lo = jobs.iter().map(|j| j.min_rev).min().unwrap_or(notified + 1);
        let hi = notified.min(lo.saturating_add(SYNC_WINDOW - 1));
        let events = if lo <= hi { self.read_events(lo, hi)? } else { Vec::new() };
        if self.store.compact_rev() != compact {
            // A compaction began during the read and may have removed part of
            // it; the next round sees the new compaction revision.
            return Ok(());
        }
        let mut advanced = Vec::new();
        for j in jobs {
            if j.min_rev > hi {
                // Nothing to read for it (a future start revision): it only needs to rejoin.
                advanced.push((j.key, j.min_rev, j.min_rev));
                continue;
            }
            let evs: Vec<Event> =
                events.iter().filter(|(r, e)| *r >= j.min_rev && j.spec.matches(e)).map(|(_, e)| e.clone()).collect();
            if !evs.is_empty() {
                let msg = WatchMsg::Events {
                    watch_id: j.watch_id,
                    // As etcd's syncWatchers: the store's revision, even when
                    // the window stops short of it.
                    revision: notified,
                    events: evs,
                    prev_kv: j.spec.prev_kv,
                    fragment: j.spec.fragment,
                };
                if j.tx.try_send(msg).is_err() {
                    continue;
                }
            }
            advanced.push((j.key, j.min_rev, hi + 1));
        }
        let progressed = !advanced.is_empty();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let mut streams = std::collections::HashSet::new();
        for (key, from, to) in advanced {
            let Some(w) = inner.watchers.get_mut(&key) else { continue };
            if w.state != State::Unsynced || w.min_rev != from {
                continue;
            }
            w.min_rev = to;
            streams.insert(w.stream);
            if to > inner.notified_rev {
                inner.set_state(key, State::Synced);
            }
        }
        for s in streams {
            inner.flush_progress(s);
        }
        // More to read: go on at once (a stalled stream waits for the timer).
        if progressed && !inner.unsynced.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The events of revisions `[lo, hi]`, in order, from the backend.
    fn read_events(&self, lo: i64, hi: i64) -> Result<Vec<(i64, Event)>, MvccError> {
        let start = Revision::new(lo, 0).to_key(false);
        let end = Revision::new(hi + 1, 0).to_key(false);
        let rows = self.store.backend().scan(Table::Key, &start, &end)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let Some((rev, tombstone)) = Revision::from_key(&k) else {
                return Err(MvccError::Corrupt(Revision::default()));
            };
            let mut kv = KeyValue::decode(v).map_err(|_| MvccError::Corrupt(rev))?;
            let ty = if tombstone {
                kv.mod_revision = rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            out.push((rev.main, Event { r#type: ty as i32, kv: Some(kv), prev_kv: None }));
        }
        Ok(out)
    }
}
