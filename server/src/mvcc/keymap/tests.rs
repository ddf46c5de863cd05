//! KeyMap against a BTreeMap of the same operations, and its layout.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use proptest::prelude::*;

use super::*;

/// Every structural promise of a KeyMap, and its contents in order.
fn check(m: &KeyMap<u32>) -> Vec<(Vec<u8>, u32)> {
    let mut all: Vec<(Vec<u8>, u32)> = Vec::new();
    let bounds: Vec<&Box<[u8]>> = m.chunks.keys().collect();
    for (n, (bound, c)) in m.chunks.iter().enumerate() {
        assert!(c.len() > 0, "an empty chunk at {bound:?}");
        assert!(c.len() <= MAX_ENTRIES, "a chunk of {}", c.len());
        assert_eq!(entry_at(&c.keys, 0).shared, 0, "a chunk's first key is whole");
        let mut w = Walk::new(&c.keys);
        let mut keys = Vec::new();
        while let Some(i) = w.advance() {
            assert_eq!(i, keys.len());
            assert!(w.key[..] >= bound[..], "{:?} below its bound {bound:?}", w.key);
            if let Some(next) = bounds.get(n + 1) {
                assert!(w.key[..] < next[..], "{:?} not below the next bound {next:?}", w.key);
            }
            keys.push(w.key.clone());
        }
        assert_eq!(w.pos, c.keys.len(), "the entries fill the keys exactly");
        assert_eq!(keys.len(), c.vals.len());
        for (k, v) in keys.into_iter().zip(&c.vals) {
            if let Some((last, _)) = all.last() {
                assert!(*last < k, "keys out of order: {last:?} then {k:?}");
            }
            all.push((k, *v));
        }
    }
    assert_eq!(all.len(), m.len());
    all
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>, u32),
    Remove(Vec<u8>),
    /// Adds one to every value from the first key to the second, at most n of them.
    Bump(Vec<u8>, Vec<u8>, usize),
}

/// Keys over a small alphabet, with 0x00 and 0xff, so that keys share
/// prefixes, are prefixes of one another, and collide.
fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(b'c'), Just(0xffu8)], 0..6)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        4 => key().prop_map(Op::Remove),
        1 => (key(), key(), 0usize..40).prop_map(|(a, b, n)| Op::Bump(a, b, n)),
    ]
}

fn bound(k: &[u8], kind: u8) -> Bound<&[u8]> {
    match kind % 3 {
        0 => Bound::Included(k),
        1 => Bound::Excluded(k),
        _ => Bound::Unbounded,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Inserts, removals and mutable visits leave a KeyMap holding what a
    /// BTreeMap holds, and every lookup and range answers alike.
    #[test]
    fn behaves_as_a_btreemap(ops in proptest::collection::vec(op(), 1..1500), probes in proptest::collection::vec((key(), key(), 0u8..9), 20)) {
        let mut m = KeyMap::default();
        let mut model: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Insert(k, v) => prop_assert_eq!(m.insert(k, *v), model.insert(k.clone(), *v)),
                Op::Remove(k) => prop_assert_eq!(m.remove(k), model.remove(k)),
                Op::Bump(a, b, n) => {
                    let mut left = *n;
                    m.visit_mut(Bound::Included(a), Bound::Excluded(b), |_, v| {
                        if left == 0 {
                            return ControlFlow::Break(());
                        }
                        left -= 1;
                        *v = v.wrapping_add(1);
                        ControlFlow::Continue(())
                    });
                    if a < b {
                        for (_, v) in model.range_mut::<[u8], _>((Bound::Included(&a[..]), Bound::Excluded(&b[..]))).take(*n) {
                            *v = v.wrapping_add(1);
                        }
                    }
                }
            }
        }
        let all = check(&m);
        prop_assert_eq!(&all, &model.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
        prop_assert_eq!(m.values().copied().collect::<Vec<_>>(), model.values().copied().collect::<Vec<_>>());
        for (a, b, kinds) in probes {
            prop_assert_eq!(m.get(&a), model.get(&a));
            prop_assert_eq!(m.get_mut(&b).copied(), model.get(&b).copied());
            let (from, to) = (bound(&a, kinds), bound(&b, kinds / 3));
            let mut got = Vec::new();
            m.visit(from, to, |k, v| {
                got.push((k.to_vec(), *v));
                ControlFlow::Continue(())
            });
            let want: Vec<(Vec<u8>, u32)> = model
                .iter()
                .filter(|(k, _)| after(k, from) && before(k, to))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            prop_assert_eq!(got, want, "visit {:?} {:?}", from, to);
        }
    }
}

fn registry_key(i: usize) -> Vec<u8> {
    format!("/registry/pods/default/{i:024}").into_bytes()
}

/// Keys loaded in order fill their chunks, and each such key takes a few
/// bytes besides its value: a lookup of each finds it.
#[test]
fn keys_loaded_in_order_fill_their_chunks() {
    let mut m = KeyMap::default();
    let n = 10_000;
    for i in 0..n {
        assert_eq!(m.insert(&registry_key(i), i as u32), None);
    }
    check(&m);
    assert_eq!(m.chunks.len(), n.div_ceil(MAX_ENTRIES));
    let key_bytes: usize = m.chunks.values().map(|c| c.keys.capacity()).sum();
    // 47-byte keys, of which only the last few digits differ.
    assert!(key_bytes < n * 8, "{key_bytes} bytes of keys for {n} keys");
    for i in 0..n {
        assert_eq!(m.get(&registry_key(i)), Some(&(i as u32)));
    }
    assert_eq!(m.get(b"/registry/pods/default/"), None);
    assert_eq!(m.get(b"/registry/pods/default/9"), None);
}

/// Removing most keys merges the chunks left under a quarter full.
#[test]
fn chunks_emptied_by_removals_merge() {
    let mut m = KeyMap::default();
    for i in 0..6400 {
        m.insert(&registry_key(i), i as u32);
    }
    for i in (0..6400).filter(|i| i % 10 != 0) {
        assert_eq!(m.remove(&registry_key(i)), Some(i as u32));
    }
    let left = check(&m);
    assert_eq!(left.len(), 640);
    assert!(m.chunks.len() <= 640 / MIN_ENTRIES + 1, "{} chunks for 640 keys", m.chunks.len());
    for i in 0..6400 {
        assert_eq!(m.remove(&registry_key(i)).is_some(), i % 10 == 0);
    }
    assert!(m.chunks.is_empty());
    assert!(m.is_empty());
}

/// Long keys split chunks by their bytes, well before the entry limit.
#[test]
fn long_keys_split_by_size() {
    let mut m = KeyMap::default();
    let key = |i: u32| {
        let mut k = vec![i as u8; 3000];
        k.extend_from_slice(&i.to_be_bytes());
        k.reverse();
        k
    };
    for i in 0..100 {
        m.insert(&key(i), i);
    }
    check(&m);
    assert!(m.chunks.len() >= 100 * 3000 / MAX_KEY_BYTES, "{} chunks", m.chunks.len());
    for i in 0..100 {
        assert_eq!(m.get(&key(i)), Some(&i));
    }
}
