//! Maintenance: Status, Hash, HashKV, Defragment and Snapshot (the file
//! format is in [`crate::snapshot`]).

use openraft::async_runtime::WatchReceiver;

use kvd_api::etcdserverpb::{HashKvResponse, HashResponse, StatusResponse};

use super::{EtcdServer, ServerError};
use crate::apply::alarm::alarm_name;
use crate::backend::Table;

/// The etcd API version kvd answers with; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.6.0";

impl EtcdServer {
    pub fn status(&self) -> StatusResponse {
        let m = self.raft.metrics().borrow_watched().clone();
        let be = self.store.backend();
        StatusResponse {
            header: Some(self.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size: be.size() as i64,
            leader: self.known_leader(m.current_leader, m.current_term),
            // etcd's raftIndex is the committed index (not the last in the log).
            raft_index: m.local_committed.map_or(0, |l| l.index()),
            raft_term: m.current_term,
            raft_applied_index: self.applier.consistent_index(),
            errors: self
                .alarms
                .list()
                .into_iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
                .collect(),
            db_size_in_use: be.size_in_use() as i64,
            is_learner: self.is_learner(),
            storage_version: "3.6.0".to_string(),
            db_size_quota: self.quota.limit() as i64,
            downgrade_info: None,
        }
    }

    /// CRC32-Castagnoli over every table of the backend, from one read
    /// transaction: a point-in-time hash, as etcd's (one bolt read tx).
    pub async fn hash(&self) -> Result<HashResponse, ServerError> {
        let be = self.store.backend().clone();
        let h = tokio::task::spawn_blocking(move || -> Result<u32, ServerError> {
            be.commit().map_err(crate::mvcc::MvccError::from)?;
            Ok(hash_tables(|f| be.scan_all_committed(f)).map_err(crate::mvcc::MvccError::from)?)
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))??;
        Ok(HashResponse { header: Some(self.header(0)), hash: h })
    }

    pub async fn hash_kv(&self, rev: i64) -> Result<HashKvResponse, ServerError> {
        let store = self.store.clone();
        let (hash, hash_rev, compact) = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        Ok(HashKvResponse { header: Some(self.header(0)), hash, compact_revision: compact, hash_revision: hash_rev })
    }

    /// Defragments this member's backend (not replicated) while it serves.
    pub async fn defragment(&self) -> Result<(), ServerError> {
        let be = self.store.backend().clone();
        tokio::task::spawn_blocking(move || be.defrag())
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
            .map_err(crate::mvcc::MvccError::from)?;
        Ok(())
    }

    /// A consistent snapshot of the backend, streamed in pieces of about
    /// `chunk` bytes (see [`crate::snapshot::stream`]), and an estimate of
    /// its size (the bytes in use) for progress.
    pub fn snapshot_stream(
        &self,
        chunk: usize,
    ) -> (tokio::sync::mpsc::Receiver<Result<crate::snapshot::Piece, crate::snapshot::SnapshotError>>, u64) {
        let be = self.store.backend().clone();
        let estimate = be.size_in_use();
        (crate::snapshot::stream(be, chunk), estimate)
    }
}

/// The hash of every table's name followed by its rows, in the order of
/// [`Table::CONTENT`], over one scan of those tables (`scan` visits them in that
/// order, each in key order).
fn hash_tables<E>(scan: impl FnOnce(&mut dyn FnMut(Table, &[u8], &[u8]) -> bool) -> Result<(), E>) -> Result<u32, E> {
    let mut h = 0u32;
    let mut named = 0usize;
    let mut name_up_to = |h: &mut u32, t: Option<Table>| {
        let stop = t.map_or(Table::CONTENT.len(), |t| t as usize + 1);
        while named < stop {
            *h = crc32c::crc32c_append(*h, Table::CONTENT[named].name().as_bytes());
            named += 1;
        }
    };
    scan(&mut |t, k, v| {
        name_up_to(&mut h, Some(t));
        h = crc32c::crc32c_append(crc32c::crc32c_append(h, k), v);
        true
    })?;
    name_up_to(&mut h, None);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-scan hash equals the table-by-table hash it replaced, empty
    /// tables included.
    #[test]
    fn hash_of_one_scan_is_the_per_table_hash() {
        let rows: Vec<(Table, &[u8], &[u8])> =
            vec![(Table::CONTENT[1], b"a", b"1"), (Table::CONTENT[1], b"b", b"2"), (Table::CONTENT[3], b"c", b"3")];
        let mut want = 0u32;
        for t in Table::CONTENT {
            want = crc32c::crc32c_append(want, t.name().as_bytes());
            for (_, k, v) in rows.iter().filter(|r| r.0 == t) {
                want = crc32c::crc32c_append(crc32c::crc32c_append(want, k), v);
            }
        }
        let got = hash_tables(|f| {
            rows.iter().for_each(|(t, k, v)| {
                f(*t, k, v);
            });
            Ok::<(), ()>(())
        });
        assert_eq!(got, Ok(want));
        let empty = hash_tables(|_| Ok::<(), ()>(()));
        let names = Table::CONTENT.iter().fold(0u32, |h, t| crc32c::crc32c_append(h, t.name().as_bytes()));
        assert_eq!(empty, Ok(names));
    }
}
