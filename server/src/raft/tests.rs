//! openraft's storage conformance suite, run against kvd's real log store (on
//! the WAL) and state machine (over Apply, MVCC and redb) in temp dirs.
//!
//! `transfer_snapshot` installs one state machine's snapshot into another:
//! kvd's snapshot of the live backend is exported to a file, as for a peer.
//!
//! Beyond the suite: a snapshot whose metadata lags its data (as an older
//! kvd leader sent them) must leave the receiver, after the entries between
//! are applied and a restart, with the membership the data holds.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use super::TypeConfig;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use crate::apply::{AlarmStore, Applier};
use crate::backend::Backend;
use crate::mvcc::KvStore;
use crate::wal::{Metadata, Wal};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (wal, replay) = Wal::open(&dir.path().join("wal"), Metadata { node_id: 1, cluster_id: 1 }).expect("wal");
        let log = LogStore::new(wal, replay).expect("log store");
        let be = Backend::open(&dir.path().join("db.redb"), 10_000, 1 << 20).expect("backend");
        let store = KvStore::open(be.clone()).expect("mvcc");
        let alarms = Arc::new(AlarmStore::load(&be).expect("alarms"));
        let lessor = Arc::new(crate::lease::Lessor::new(2));
        let watch = crate::watch::WatchHub::new(store.clone());
        let auth = Arc::new(crate::auth::AuthStore::new(std::time::Duration::from_secs(300)));
        let applier = Arc::new(Applier::new(store, alarms, lessor, watch, auth).expect("applier"));
        let sm = StateMachine::new(applier, Arc::new(|_, _| {})).expect("state machine");
        Ok((dir, log, sm))
    }
}

type S = Suite<TypeConfig, LogStore, StateMachine, Builder, tempfile::TempDir>;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, log, sm) = Builder.build().await.unwrap();
            S::$name(log, sm).await.unwrap();
        }
    )*};
}

suite!(
    last_membership_in_log_initial,
    last_membership_in_log,
    last_membership_in_log_multi_step,
    get_membership_initial,
    get_membership_from_log_and_empty_sm,
    get_membership_from_empty_log_and_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_without_init,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_inverted_log_order,
    get_initial_state_conflict_at_same_index,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    leader_bounded_stream,
    entries_stream,
    try_get_log_entry,
    log_reader_reads_new_entries,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    purge_logs_upto_20,
    delete_logs_after_11,
    delete_logs_after_5,
    delete_logs_after_0,
    delete_logs_after_none,
    append_to_log,
    apply_single,
    apply_multiple,
);

// These build a raft snapshot of the state machine.
suite!(
    get_initial_state_last_log_lt_sm,
    get_initial_state_log_ids,
    get_initial_state_membership_from_empty_log_and_sm,
    get_initial_state_membership_from_log_insm_is_smaller,
    get_initial_state_membership_from_sm_inlog_is_smaller,
    get_initial_state_re_apply_committed,
    snapshot_meta,
    snapshot_meta_optional,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_snapshot() {
    S::transfer_snapshot(&Builder).await.unwrap();
}

/// Applies `entries` to `sm`, as openraft does (no responders).
async fn apply(sm: &mut StateMachine, entries: Vec<super::Entry>) {
    use openraft::storage::RaftStateMachine;
    let items = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(items).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_snapshot_metadata_keeps_the_data_membership_across_a_restart() {
    use std::collections::BTreeSet;

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::testing::{blank_ent, log_id, membership_ent};
    let voters = |v: &[u64]| vec![v.iter().copied().collect::<BTreeSet<u64>>()];
    let (_dl, _, mut leader) = Builder.build().await.unwrap();
    apply(
        &mut leader,
        vec![membership_ent::<TypeConfig>(1, 1, 1, voters(&[1, 2, 3])), blank_ent::<TypeConfig>(1, 1, 2)],
    )
    .await;
    let built = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    // The membership changes after the build; the live backend has it.
    let later = vec![membership_ent::<TypeConfig>(1, 1, 3, voters(&[1, 2, 4])), blank_ent::<TypeConfig>(1, 1, 4)];
    apply(&mut leader, later.clone()).await;
    let current = leader.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id, Some(log_id::<TypeConfig>(1, 1, 2)), "built before the change");

    let (_df, _, mut follower) = Builder.build().await.unwrap();
    follower.install_snapshot(&built.meta, current.snapshot).await.unwrap();
    // Raft applies the entries after the metadata; the data holds them already.
    apply(&mut follower, later).await;
    apply(&mut follower, vec![blank_ent::<TypeConfig>(1, 1, 5)]).await;
    // As at a restart: raft's state read back from the backend's rows.
    let mut reopened = follower.reopened().unwrap();
    let (applied, membership) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 5)));
    assert_eq!(membership.log_id(), &Some(log_id::<TypeConfig>(1, 1, 3)), "{membership:?}");
    assert_eq!(membership.membership().voter_ids().collect::<BTreeSet<_>>(), [1, 2, 4].into());
}
