//! openraft's log storage on kvd's WAL.
//!
//! Entries live in memory for replication and in the WAL for durability. All
//! WAL records go through the one writer queue, so vote and log IO stay in the
//! order openraft issued them. `append` hands the entries to the WAL and
//! returns at once; the `IOFlushed` callback fires after the fdatasync that
//! covers them, which lets openraft pipeline appends (group commit).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::{Condvar, Mutex};

use super::{Entry, LogId, TypeConfig, Vote, decode, encode};
use crate::wal::{Record, Replay, Wal};

#[derive(Default)]
struct Inner {
    log: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

#[derive(Clone)]
pub struct LogStore {
    wal: Wal,
    inner: Arc<Mutex<Inner>>,
    durable: Arc<Durable>,
}

/// The highest log index whose entry (or a purge marker at or past it) the
/// WAL holds durably.
#[derive(Default)]
pub struct Durable {
    index: Mutex<u64>,
    moved: Condvar,
}

impl Durable {
    fn advance(&self, to: u64) {
        let mut i = self.index.lock();
        if to > *i {
            *i = to;
            self.moved.notify_all();
        }
    }

    /// Entries after `last` were truncated: their durability no longer counts.
    fn cut(&self, last: u64) {
        let mut i = self.index.lock();
        *i = (*i).min(last);
    }

    pub fn index(&self) -> u64 {
        *self.index.lock()
    }

    /// Waits up to `timeout` until the WAL holds entries through `index`
    /// durably; returns whether it does.
    pub fn wait(&self, index: u64, timeout: Duration) -> bool {
        let mut i = self.index.lock();
        if *i >= index {
            return true;
        }
        let _ = self.moved.wait_while_for(&mut i, |i| *i < index, timeout);
        *i >= index
    }
}

impl LogStore {
    /// Builds the log from what the WAL replayed.
    pub fn new(wal: Wal, replay: Replay) -> io::Result<Self> {
        let mut inner = Inner::default();
        for (index, data) in replay.entries {
            let e: Entry = decode(&data)?;
            if e.index() != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("WAL entry {index} decodes as {}", e.index()),
                ));
            }
            inner.log.insert(index, e);
        }
        if let Some(v) = replay.state {
            inner.vote = Some(decode(&v)?);
        }
        if let Some(c) = replay.commit {
            inner.committed = decode(&c)?;
        }
        if let Some((_, data)) = replay.snapshot {
            inner.last_purged = decode(&data)?;
        }
        tracing::info!(
            entries = inner.log.len(),
            first = inner.log.keys().next().copied(),
            last = inner.log.keys().next_back().copied(),
            "replayed raft log from the WAL"
        );
        // What replay found is on the disk.
        let last = inner.log.keys().next_back().copied().or(inner.last_purged.map(|l| l.index())).unwrap_or(0);
        let durable = Arc::new(Durable::default());
        durable.advance(last);
        Ok(Self { wal, inner: Arc::new(Mutex::new(inner)), durable })
    }

    /// What the WAL holds durably.
    pub fn durable(&self) -> Arc<Durable> {
        self.durable.clone()
    }

    /// Purges the log through `at`, which a snapshot in the backend covers
    /// (raft's purge, and at start the record of an installed snapshot that
    /// was lost with the WAL's unsynced tail).
    pub async fn record_snapshot(&self, at: LogId) -> io::Result<()> {
        {
            let mut g = self.inner.lock();
            let keep = g.log.split_off(&(at.index() + 1));
            g.log = keep;
            g.last_purged = Some(at);
        }
        // Durable before any segment is deleted, so replay never sees a log
        // that starts after a gap.
        self.wal.purge(at.index(), encode(&Some(at))).await.map_err(wal_err)?;
        self.durable.advance(at.index());
        Ok(())
    }

    /// The index through which the log was purged, if it was.
    pub fn last_purged_index(&self) -> Option<u64> {
        self.inner.lock().last_purged.map(|l| l.index())
    }

    /// `--force-new-cluster`: appends (durably) a membership entry naming
    /// this member as the only voter, after the last entry. Raft then starts
    /// with that membership, elects this member and commits the entry with
    /// everything before it, as etcd's force-new-cluster commits a
    /// configuration that removes every other member. Nothing is appended
    /// when the last membership in the log is already this member alone.
    /// Returns whether it appended.
    pub async fn force_single_member(&self, me: u64, node: super::Member) -> io::Result<bool> {
        use openraft::EntryPayload;
        use openraft::Membership;
        let entry = {
            let g = self.inner.lock();
            let last_membership = g.log.values().rev().find_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some(m.clone()),
                _ => None,
            });
            if let Some(m) = last_membership
                && m.voter_ids().eq([me])
                && m.nodes().count() == 1
            {
                return Ok(false);
            }
            let Some(last) = g.log.values().next_back().map(|e| e.log_id()).or(g.last_purged) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--force-new-cluster needs the data dir of a member that has been part of a cluster",
                ));
            };
            let members = Membership::new(vec![[me].into()], BTreeMap::from([(me, node)]))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            let log_id = LogId::new(*last.committed_leader_id(), last.index() + 1);
            Entry::new_membership(log_id, members)
        };
        let index = entry.index();
        self.wal.append_sync(vec![Record::Entry { index, data: encode(&entry) }]).await.map_err(wal_err)?;
        self.inner.lock().log.insert(index, entry);
        self.durable.advance(index);
        Ok(true)
    }

    /// Last log index, for Status.
    pub fn last_index(&self) -> u64 {
        let g = self.inner.lock();
        g.log.keys().next_back().copied().or(g.last_purged.map(|l| l.index())).unwrap_or(0)
    }
}

fn wal_err(e: crate::wal::WalError) -> io::Error {
    io::Error::other(e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.inner.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.inner.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let g = self.inner.lock();
        let last = g.log.values().next_back().map(|e| e.log_id()).or(g.last_purged);
        Ok(LogState { last_purged_log_id: g.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.inner.lock().vote = Some(*vote);
        // A vote must be durable before raft acts on it.
        self.wal.append_sync(vec![Record::State(encode(vote))]).await.map_err(wal_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.inner.lock().committed = committed;
        // Durable with the next fdatasync; a lower committed index after a crash is safe.
        self.wal.append_lazy(vec![Record::Commit(encode(&committed))]);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut last = 0;
        {
            let mut g = self.inner.lock();
            for e in entries {
                last = e.index();
                records.push(Record::Entry { index: e.index(), data: encode(&e) });
                g.log.insert(e.index(), e);
            }
        }
        // Acknowledged to raft only after the fdatasync covering these records.
        let durable = self.durable.clone();
        self.wal.append(
            records,
            Box::new(move |r| {
                if r.is_ok() {
                    durable.advance(last);
                }
                callback.io_completed(r.map_err(wal_err))
            }),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let since = last.map(|l| l.index() + 1).unwrap_or(0);
        self.inner.lock().log.split_off(&since);
        self.durable.cut(since.saturating_sub(1));
        // Ordered before any later append; losing it in a crash only brings back
        // uncommitted entries, which the leader truncates again.
        self.wal.append_lazy(vec![Record::Truncate { since }]);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.record_snapshot(log_id).await
    }
}
