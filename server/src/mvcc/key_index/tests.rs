//! The compact [`KeyIndex`] against the full [`Generations`] it stands for.

use super::*;
use proptest::prelude::*;

fn r(m: i64) -> Revision {
    Revision::new(m, 0)
}

#[test]
fn fits_in_sixteen_bytes() {
    // The point of the compact form: a B-tree value no larger than the key's pointer.
    assert_eq!(std::mem::size_of::<KeyIndex>(), 16);
}

#[test]
fn a_key_written_once_stays_compact() {
    let mut ki = KeyIndex::default();
    ki.put(Revision::new(7, 3));
    assert_eq!(ki.0, Repr::Once(Packed { main: 7, sub: 3 }));
    assert_eq!(ki.get(7), Some(KeyAt { modified: Revision::new(7, 3), created: Revision::new(7, 3), version: 1 }));
    assert_eq!(ki.get(6), None);
    let mut keep = HashSet::new();
    ki.compact(100, &mut keep);
    assert_eq!(keep, HashSet::from([Revision::new(7, 3)]));
    assert!(matches!(ki.0, Repr::Once(_)));
}

#[test]
fn a_sub_revision_beyond_32_bits_uses_the_full_form() {
    let mut ki = KeyIndex::default();
    let rev = Revision::new(9, i64::from(u32::MAX) + 1);
    ki.put(rev);
    assert!(matches!(ki.0, Repr::Full(_)));
    assert_eq!(ki.get(9).map(|a| a.modified), Some(rev));
}

#[test]
fn compaction_shrinks_back_when_only_one_creation_remains() {
    // put@1 del@2 put@3: after compacting at 3 only the generation [3] remains.
    let mut ki = KeyIndex::default();
    ki.put(r(1));
    assert!(ki.tombstone(r(2)));
    ki.put(r(3));
    assert!(matches!(ki.0, Repr::Full(_)));
    ki.compact(3, &mut HashSet::new());
    assert_eq!(ki.0, Repr::Once(Packed { main: 3, sub: 0 }));
    // An update keeps its creation revision: that cannot be compact.
    ki.put(r(4));
    ki.compact(4, &mut HashSet::new());
    assert!(matches!(ki.0, Repr::Full(_)));
    assert_eq!(ki.get(4), Some(KeyAt { modified: r(4), created: r(3), version: 2 }));
}

#[derive(Debug, Clone)]
enum Op {
    /// A put in a new write (`true`: a sub revision too large to pack).
    Put(bool),
    /// A second put in the same write.
    PutSameMain,
    Del,
    Compact(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Put(false)),
        1 => Just(Op::Put(true)),
        1 => Just(Op::PutSameMain),
        2 => Just(Op::Del),
        2 => (0i64..4).prop_map(Op::Compact),
    ]
}

/// Applies `ops` to both forms and compares every answer after each.
fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut compact = KeyIndex::default();
    let mut full = Generations::default();
    let mut main = 0i64;
    let mut sub = 0i64;
    let mut compacted = 0i64;
    for op in ops {
        match op {
            Op::Put(big) => {
                main += 1;
                sub = if *big { i64::from(u32::MAX) + 5 } else { 0 };
                compact.put(Revision::new(main, sub));
                full.put(Revision::new(main, sub));
            }
            Op::PutSameMain => {
                if main == 0 {
                    continue;
                }
                sub += 1;
                compact.put(Revision::new(main, sub));
                full.put(Revision::new(main, sub));
            }
            Op::Del => {
                main += 1;
                sub = 0;
                prop_assert_eq!(compact.tombstone(r(main)), full.tombstone(r(main)));
            }
            Op::Compact(back) => {
                let at = (main - back).max(compacted);
                compacted = at;
                let (mut a, mut b) = (HashSet::new(), HashSet::new());
                compact.compact(at, &mut a);
                full.compact(at, &mut b);
                prop_assert_eq!(a, b);
            }
        }
        prop_assert_eq!(compact.is_empty(), full.is_empty());
        prop_assert_eq!(compact.is_live(), full.is_live());
        prop_assert_eq!(compact.last_revision(), full.last_revision());
        for at in compacted.max(1)..=main + 1 {
            prop_assert_eq!(compact.get(at), full.get(at), "at {}", at);
            prop_assert_eq!(compact.since(at), full.since(at), "since {}", at);
            let (mut a, mut b) = (HashSet::new(), HashSet::new());
            compact.keep(at, &mut a);
            full.keep(at, &mut b);
            prop_assert_eq!(a, b, "keep {}", at);
        }
        if let Repr::Once(p) = compact.0 {
            prop_assert_eq!(full.as_once(), Some(p.rev()));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn compact_form_answers_as_the_full_history(ops in proptest::collection::vec(op(), 1..40)) {
        check(&ops)?;
    }
}
