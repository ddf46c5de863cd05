//! Entry points for the fuzz targets in `fuzz/` and for the test that replays
//! their kept corpora (`server/tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes and may reject them with an error, but must never panic, hang or
//! leave the state it works on inconsistent; the invariants it checks panic
//! on purpose, so the fuzzer reports them.

pub(crate) mod bbolt;
mod grpc;
mod grpc_build;
pub use bbolt::bbolt_file;
pub use grpc::grpc_requests;

use std::sync::Arc;

use kvd_api::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, InternalRaftRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use kvd_api::mvccpb::KeyValue;
use prost::Message;

use crate::apply::Applier;
use crate::apply::alarm::AlarmStore;
use crate::auth::AuthStore;
use crate::backend::{Backend, Table};
use crate::lease::Lessor;
use crate::mvcc::{KvStore, RangeEnd, RangeOptions, Revision};
use crate::rpc::validate;
use crate::wal::record::{Decoded, Decoder, Encoder};
use crate::wal::segment::SegmentName;
use crate::wal::{Metadata, Record};
use crate::watch::WatchHub;

/// Splits the input into length-prefixed chunks (one byte of length each).
pub(crate) fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let n = (n as usize).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// A WAL segment. The first byte picks how it is made: odd, the bytes are
/// the segment as they are; even, a valid segment is encoded from records
/// taken from the input, then cut or flipped where the input says (a torn
/// write, a bad disk). Replay must succeed or refuse with an error; after a
/// repair, a second replay must succeed and find the same entries.
pub fn wal_segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 1 { rest.to_vec() } else { encoded_segment(rest) };
    // Decoding frame by frame from the start never panics either.
    let mut dec = Decoder::new(&bytes, 0);
    let mut off = 0;
    while let Ok(Decoded::Record(_, next)) = dec.decode_at(off) {
        off = next;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let name = SegmentName { seq: 0, index: 0 }.file_name();
    std::fs::write(dir.path().join(name), &bytes).expect("write segment");
    let Ok((first, _)) = crate::wal::replay::replay(dir.path()) else { return };
    let (again, _) = crate::wal::replay::replay(dir.path()).expect("a replayed (and repaired) WAL replays again");
    assert_eq!(first.entries.len(), again.entries.len(), "a second replay found other entries");
}

/// Metadata and a CRC record, then records from the input; then damage.
fn encoded_segment(data: &[u8]) -> Vec<u8> {
    let parts = chunks(data);
    let mut enc = Encoder::new(0);
    let mut out = Vec::new();
    enc.encode(&Record::Crc(0), &mut out);
    enc.encode(&Record::Metadata(Metadata { node_id: 1, cluster_id: 2 }), &mut out);
    let mut damage = None;
    for (i, p) in parts.iter().enumerate() {
        let index = i as u64 + 1;
        let rec = match p.first().copied().unwrap_or(0) % 8 {
            0..=2 => Record::Entry { index, data: p.to_vec().into() },
            3 => Record::State(p.to_vec().into()),
            4 => Record::Commit(p.to_vec().into()),
            5 => Record::Truncate { since: p.len() as u64 },
            6 => Record::Snapshot { index: p.len() as u64, data: p.to_vec().into() },
            _ => {
                damage = Some(p);
                continue;
            }
        };
        enc.encode(&rec, &mut out);
    }
    if let Some(d) = damage.filter(|d| d.len() >= 3) {
        let at = u16::from_le_bytes([d[1], d[2]]) as usize % out.len().max(1);
        if d.len() % 2 == 0 {
            out.truncate(at);
        } else {
            out[at] ^= d.get(3).copied().unwrap_or(1).max(1);
        }
    }
    out
}

/// Rows of the backend as they are read back: a key-table row (revision key
/// and KeyValue), a lease row, a meta value. Decoding refuses or accepts;
/// a store opened on such rows opens or refuses with an error.
pub fn backend_rows(data: &[u8]) {
    let parts = chunks(data);
    for p in &parts {
        let _ = Revision::from_key(p);
        let _ = KeyValue::decode(*p);
        let _ = crate::mvcc::meta::decode(p);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let be = Backend::open(&dir.path().join("db.redb"), 1000, 1 << 20).expect("open backend");
    be.write(|b| {
        for pair in parts.chunks(2) {
            let (k, v) = (pair[0], pair.get(1).copied().unwrap_or_default());
            let table = match k.first().copied().unwrap_or(0) % 4 {
                0 | 1 => Table::Key,
                2 => Table::Lease,
                _ => Table::Meta,
            };
            let key = if table == Table::Key && k.len() > 1 && k[1] % 2 == 0 {
                // A well-formed revision key, so decoding reaches the value.
                Revision::new(i64::from(k[1]), 0).to_key(k.len() % 3 == 0)
            } else {
                k.to_vec()
            };
            b.put(table, key, v.to_vec().into());
        }
    });
    be.commit().expect("commit");
    if let Ok(store) = KvStore::open(be.clone()) {
        let _ = AlarmStore::load(&be);
        let lessor = Lessor::new(5);
        let _ = lessor.load(&be, &store);
        let _ = store.range(b"\0", RangeEnd::Unbounded, RangeOptions::default());
    }
}

/// One member's apply path without raft: a store on a temporary backend.
pub struct ApplyHarness {
    applier: Arc<Applier>,
    store: Arc<KvStore>,
    index: u64,
    _dir: tempfile::TempDir,
}

impl ApplyHarness {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::open(dir)
    }

    fn open(dir: tempfile::TempDir) -> Self {
        let be = Backend::open(&dir.path().join("db.redb"), 1000, 4 << 20).expect("open backend");
        let store = KvStore::open(be.clone()).expect("open store");
        let alarms = Arc::new(AlarmStore::load(&be).expect("alarms"));
        let lessor = Arc::new(Lessor::new(5));
        let watch = WatchHub::new(store.clone());
        let auth = Arc::new(AuthStore::new(std::time::Duration::from_secs(300)));
        let applier = Arc::new(Applier::new(store.clone(), alarms, lessor, watch, auth).expect("applier"));
        Self { applier, store, index: 0, _dir: dir }
    }

    /// Requests taken from the input, each checked as the gRPC layer checks
    /// it, then applied as a committed raft entry. After each: the revision
    /// never goes back, and a full range and a hash of the store still work.
    pub fn run(&mut self, data: &[u8]) {
        for p in chunks(data) {
            let Some((&kind, body)) = p.split_first() else { continue };
            let Some(req) = request(kind, body) else { continue };
            self.index += 1;
            let before = self.store.rev();
            match self.applier.apply(self.index, 1, Some(&req), Vec::new()) {
                Ok(_) => {}
                Err(fatal) => panic!("apply of a validated request failed fatally: {fatal:?} for {req:?}"),
            }
            assert!(self.store.rev() >= before, "the revision went back");
            self.store.range(b"\0", RangeEnd::Unbounded, RangeOptions::default()).expect("full range");
            self.store.hash_kv(0).expect("hash");
        }
    }
}

impl Default for ApplyHarness {
    fn default() -> Self {
        Self::new()
    }
}

/// The request the first byte names, decoded from `body` and validated as
/// the gRPC layer does; None when decoding or validation refuses it.
fn request(kind: u8, body: &[u8]) -> Option<InternalRaftRequest> {
    let mut req = InternalRaftRequest::default();
    match kind % 7 {
        0 => {
            let r = RangeRequest::decode(body).ok()?;
            validate::check_range(&r).ok()?;
            req.range = Some(r);
        }
        1 => {
            let r = PutRequest::decode(body).ok()?;
            validate::check_put(&r).ok()?;
            req.put = Some(r);
        }
        2 => {
            let r = DeleteRangeRequest::decode(body).ok()?;
            validate::check_delete(&r).ok()?;
            req.delete_range = Some(r);
        }
        3 => {
            let r = TxnRequest::decode(body).ok()?;
            validate::check_txn(&r, 128).ok()?;
            req.txn = Some(r);
        }
        4 => req.compaction = Some(CompactionRequest::decode(body).ok()?),
        5 => {
            let mut r = LeaseGrantRequest::decode(body).ok()?;
            // The server picks an id before proposing when the client gave none.
            if r.id == 0 {
                r.id = 1 + body.len() as i64;
            }
            req.lease_grant = Some(r);
        }
        _ => req.lease_revoke = Some(LeaseRevokeRequest::decode(body).ok()?),
    }
    Some(req)
}

/// Applies the requests in `data` on a fresh store.
pub fn apply_requests(data: &[u8]) {
    ApplyHarness::new().run(data);
}
