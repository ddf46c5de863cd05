//! A physical compaction's pacing (`--compaction-batch-limit`,
//! `--compaction-sleep-interval`): it changes the steps, never what is left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::restore_tests::rows;
use super::{CompactionPacing, KvStore, RangeEnd, RangeOptions};
use crate::backend::{Backend, Table};

const KEYS: usize = 10;
const REVISIONS_PER_KEY: usize = 30;

/// A store holding `KEYS` keys put `REVISIONS_PER_KEY` times each.
fn store_with_history(path: &std::path::Path) -> Arc<KvStore> {
    let store = KvStore::open(Backend::open(path, 100, 1 << 20).unwrap()).unwrap();
    let mut index = 0;
    for round in 0..REVISIONS_PER_KEY {
        for k in 0..KEYS {
            index += 1;
            let mut tx = store.write();
            tx.put(format!("k{k}").as_bytes(), format!("v{round}").as_bytes(), 0);
            tx.end(index, 1);
        }
    }
    store
}

#[test]
fn pacing_changes_the_steps_not_what_is_left() {
    let paced = CompactionPacing { batch: 50, pause: Duration::from_millis(20) };
    for pacing in [CompactionPacing::default(), CompactionPacing { batch: 7, pause: Duration::ZERO }, paced] {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_history(&dir.path().join("db"));
        store.set_compaction_pacing(pacing);
        let at = store.rev();
        let mut tx = store.write();
        tx.schedule_compaction(at).unwrap();
        tx.end((KEYS * REVISIONS_PER_KEY + 1) as u64, 1);
        let t = Instant::now();
        let removed = store.compact_physical(at).unwrap();
        let took = t.elapsed();
        assert_eq!(removed, KEYS * (REVISIONS_PER_KEY - 1), "{pacing:?}");
        assert_eq!(rows(store.backend(), Table::Key).len(), KEYS, "{pacing:?}");
        let live = store.range(b"k", RangeEnd::Unbounded, RangeOptions::default()).unwrap().kvs;
        let last = format!("v{}", REVISIONS_PER_KEY - 1);
        assert!(live.iter().all(|kv| kv.value == last.as_bytes()), "{pacing:?}");
        assert_eq!(live.len(), KEYS);
        if pacing == paced {
            // 300 rows in steps of 50: six full steps, each with its pause
            // (one step of 1000 rows would have had none).
            let pauses = (KEYS * REVISIONS_PER_KEY / pacing.batch) as u32;
            assert!(took >= pacing.pause * pauses, "{took:?} for {pauses} pauses of {:?}", pacing.pause);
        }
    }
}
