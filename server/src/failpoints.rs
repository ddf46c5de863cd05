//! Crash points for the failpoint tests (server/tests/failpoints.rs).
//!
//! With the `failpoints` cargo feature, kvd reads `FAILPOINTS` at start (the
//! `fail` crate's syntax, e.g. `wal_after_fsync=20*off->return`), and a crash
//! point set to `return` ends the process on the spot, without flushing or
//! unwinding, as kill -9 would (what was written survives in the page cache;
//! a power cut is the WAL tests' simulated disk). Without the feature (the
//! default, and every release build) [`crash_point`] is empty and `FAILPOINTS`
//! is ignored.
//!
//! The points, each where a crash tests a durability argument:
//! - `wal_before_fsync`, `wal_after_fsync`: around the WAL's fdatasync
//!   (wal/writer.rs);
//! - `backend_before_commit`: entries applied in memory, their backend batch
//!   not committed (backend/mod.rs);
//! - `snapshot_install_mid`: a leader's snapshot loaded into the backend's
//!   transaction, not committed (backend/mod.rs);
//! - `snapshot_installed`: the snapshot committed, the WAL's record of it
//!   not yet written (mvcc/kvstore.rs);
//! - `defrag_mid_copy`, `defrag_after_rename`: a defragmentation after the
//!   copy, and after the new file replaced the old one but before the swap
//!   (backend/defrag.rs);
//! - `compaction_step`: after a step of a paced compaction, most of which
//!   are not durable (mvcc/kvstore.rs).
//!
//! And fault points, [`fails`], that make an attempt fail without
//! crashing:
//! - `publish_attributes`: a member's publish of its name and client URLs
//!   (etcdserver/cluster.rs), retried as when no leader answers;
//! - `propose_lost`: a proposal never submitted (etcdserver/kv.rs), as one
//!   a leader took and lost with its term: no apply comes, and the proposer
//!   waits out its timeout;
//! - `forwarded_lease_call`: the leader's answer to a keep-alive or
//!   TimeToLive another member forwarded (rpc/peer.rs), failed as a call
//!   cut off by a closed connection;
//! - `append_stream`: a leader's replication stream (rpc/peer.rs), answered
//!   Unimplemented as by a member that predates it.

/// The exit status of a process ended by a crash point.
pub const CRASH_EXIT_CODE: i32 = 97;

/// Ends the process at once if failpoint `name` is set to `return`.
#[inline(always)]
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("kvd: failpoint {name}: crashing");
        // SAFETY: _exit(2) ends the process without running any destructor
        // or flushing anything, which is the crash being simulated.
        unsafe { libc::_exit(CRASH_EXIT_CODE) }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// True if fault point `name` is set to `return` for this evaluation.
#[inline(always)]
pub fn fails(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |_| ()).is_some();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Reads `FAILPOINTS`; keep the guard for the life of the process.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}
