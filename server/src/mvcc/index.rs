//! treeIndex: an ordered map from user key to its [`KeyIndex`].

use std::collections::HashSet;
use std::ops::{Bound, ControlFlow};

use super::key_index::{KeyAt, KeyIndex};
use super::keymap::KeyMap;
use super::revision::Revision;

/// The end of a key range, as the API layer decodes it.
#[derive(Debug, Clone, Copy)]
pub enum RangeEnd<'a> {
    /// Only the key itself.
    Single,
    /// Every key >= the start key (range_end "\0").
    Unbounded,
    /// Keys in [start, end).
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    /// etcd's convention: empty = single key, "\0" = unbounded.
    pub fn from_request(range_end: &'a [u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            e => RangeEnd::Before(e),
        }
    }
}

#[derive(Debug, Default)]
pub struct TreeIndex {
    tree: KeyMap<KeyIndex>,
}

impl TreeIndex {
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.tree.get(key)?.get(at)
    }

    /// Calls `f` for every key in range that exists at `at`, in key order,
    /// until it returns false.
    pub fn visit(&self, key: &[u8], end: RangeEnd<'_>, at: i64, mut f: impl FnMut(&[u8], KeyAt) -> bool) {
        let to = match end {
            RangeEnd::Single => {
                if let Some(at) = self.tree.get(key).and_then(|ki| ki.get(at)) {
                    f(key, at);
                }
                return;
            }
            RangeEnd::Unbounded => Bound::Unbounded,
            RangeEnd::Before(e) => Bound::Excluded(e),
        };
        self.tree.visit(Bound::Included(key), to, |k, ki| match ki.get(at) {
            Some(at) if !f(k, at) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        });
    }

    /// Keys in range at `at`: up to `limit` of them (0 = all) and the total count.
    pub fn range(&self, key: &[u8], end: RangeEnd<'_>, at: i64, limit: usize) -> (Vec<(Vec<u8>, KeyAt)>, usize) {
        let mut out = Vec::new();
        let mut total = 0;
        self.visit(key, end, at, |k, a| {
            total += 1;
            if limit == 0 || out.len() < limit {
                out.push((k.to_vec(), a));
            }
            true
        });
        (out, total)
    }

    /// Records a put of `key` at `rev`; returns what the key was at
    /// `rev.main` before it (one lookup for both).
    pub fn put(&mut self, key: &[u8], rev: Revision) -> Option<KeyAt> {
        let mut prev = None;
        self.tree.upsert(key, |ki| {
            let Some(ki) = ki else {
                let mut ki = KeyIndex::default();
                ki.put(rev);
                return Some(ki);
            };
            prev = ki.get(rev.main);
            ki.put(rev);
            None
        });
        prev
    }

    /// Marks `key` deleted at `rev`; false if it does not currently exist.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.tree.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    /// Rebuild from the backend: a key's revision seen in revision order.
    pub fn restore(&mut self, key: &[u8], rev: Revision, created: i64, version: i64, tombstone: bool) {
        let first = |ki: &mut KeyIndex| {
            if tombstone {
                ki.restore_tombstone(rev);
            } else {
                ki.restore(Revision::new(created, 0), rev, version);
            }
        };
        self.tree.upsert(key, |ki| {
            match ki {
                Some(ki) if ki.is_empty() => first(ki),
                Some(ki) if tombstone => {
                    if !ki.tombstone(rev) {
                        ki.restore_tombstone(rev);
                    }
                }
                Some(ki) => ki.put(rev),
                None => {
                    let mut ki = KeyIndex::default();
                    first(&mut ki);
                    return Some(ki);
                }
            }
            None
        });
    }

    /// Compacts every key at `at`; returns the revisions that must stay in the backend.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        let mut from = None;
        while let Some(next) = self.compact_some(from.as_deref(), usize::MAX, at, &mut keep) {
            from = Some(next);
        }
        keep
    }

    /// Compacts, at `at`, up to `n` keys from `from` on (from the first key
    /// when None), adding the revisions that must stay in the backend to
    /// `keep`; returns the key to go on from, or None after the last key.
    /// A compaction done a slice at a time holds the index for one slice
    /// at a time (etcd locks it key by key), not for the whole index.
    pub fn compact_some(
        &mut self,
        from: Option<&[u8]>,
        n: usize,
        at: i64,
        keep: &mut HashSet<Revision>,
    ) -> Option<Box<[u8]>> {
        let start = from.map_or(Bound::Unbounded, Bound::Included);
        let (mut empty, mut next, mut i) = (Vec::new(), None, 0);
        self.tree.visit_mut(start, Bound::Unbounded, |k, ki| {
            if i == n {
                next = Some(k.into());
                return ControlFlow::Break(());
            }
            i += 1;
            ki.compact(at, keep);
            if ki.is_empty() {
                empty.push(k.to_vec());
            }
            ControlFlow::Continue(())
        });
        for k in empty {
            self.tree.remove(&k);
        }
        next
    }

    /// The revisions a compaction at `at` would keep, without compacting.
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.tree.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }

    /// Number of keys that exist at the latest revision.
    pub fn live_keys(&self) -> usize {
        self.tree.values().filter(|ki| ki.is_live()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compaction a few keys at a time keeps what one in one go keeps,
    /// and leaves the same index.
    #[test]
    fn compaction_in_slices_is_compaction_in_one_go() {
        let build = || {
            let mut t = TreeIndex::default();
            for main in 1..=300i64 {
                let key = format!("k{:02}", main % 37).into_bytes();
                if main % 11 == 0 {
                    t.tombstone(&key, Revision::new(main, 0));
                } else {
                    t.put(&key, Revision::new(main, 0));
                }
            }
            t
        };
        for at in [1, 50, 150, 299, 300] {
            let mut whole = build();
            let want = whole.compact(at);
            let mut sliced = build();
            let (mut keep, mut from) = (HashSet::new(), None);
            while let Some(next) = sliced.compact_some(from.as_deref(), 3, at, &mut keep) {
                from = Some(next);
            }
            assert_eq!(keep, want, "at {at}");
            assert_eq!(sliced.tree.len(), whole.tree.len(), "at {at}");
            for main in at..=300 {
                for k in 0..37 {
                    let key = format!("k{k:02}").into_bytes();
                    assert_eq!(sliced.get(&key, main), whole.get(&key, main), "{k} at {main} after {at}");
                }
            }
        }
    }

    #[test]
    fn range_bounds() {
        let mut t = TreeIndex::default();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            t.put(*k, Revision::new(i as i64 + 1, 0));
        }
        assert!(t.tombstone(b"c", Revision::new(5, 0)));
        let keys = |end, at, limit| {
            let (v, n) = t.range(b"b", end, at, limit);
            (v.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), n)
        };
        assert_eq!(keys(RangeEnd::Single, 5, 0), (vec![b"b".to_vec()], 1));
        assert_eq!(keys(RangeEnd::Unbounded, 5, 0), (vec![b"b".to_vec(), b"d".to_vec()], 2));
        assert_eq!(keys(RangeEnd::Unbounded, 4, 1), (vec![b"b".to_vec()], 3));
        assert_eq!(keys(RangeEnd::Before(b"d"), 4, 0).1, 2);
        assert_eq!(keys(RangeEnd::Before(b"a"), 4, 0).1, 0);
        assert_eq!(t.live_keys(), 3);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(u8),
        Del(u8),
        Compact,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![6 => (0u8..4).prop_map(Step::Put), 3 => (0u8..4).prop_map(Step::Del), 1 => Just(Step::Compact)]
    }

    /// The state of `key` at `rev` by replaying the history, as a model.
    fn model(history: &[(i64, u8, bool)], key: u8, rev: i64) -> Option<(i64, i64, i64)> {
        let mut state: Option<(i64, i64, i64)> = None; // (created, modified, version)
        for &(r, _, put) in history.iter().filter(|(r, k, _)| *r <= rev && *k == key) {
            state = if put {
                Some(match state {
                    Some((c, _, v)) => (c, r, v + 1),
                    None => (r, r, 1),
                })
            } else {
                None
            };
        }
        state
    }

    proptest::proptest! {
        /// The index answers like a replay of the history at every revision not
        /// compacted away, before and after compactions.
        #[test]
        fn index_matches_history_model(steps in proptest::collection::vec(step(), 1..120)) {
            let mut t = TreeIndex::default();
            let mut history: Vec<(i64, u8, bool)> = Vec::new();
            let mut rev = 1i64;
            let mut compacted = 0i64;
            for s in steps {
                match s {
                    Step::Put(k) => {
                        rev += 1;
                        let prev = t.put(&[k], Revision::new(rev, 0)).map(|a| (a.created.main, a.modified.main, a.version));
                        proptest::prop_assert_eq!(prev, model(&history, k, rev - 1), "put {} at {}", k, rev);
                        history.push((rev, k, true));
                    }
                    Step::Del(k) => {
                        if t.get(&[k], rev).is_some() {
                            rev += 1;
                            assert!(t.tombstone(&[k], Revision::new(rev, 0)));
                            history.push((rev, k, false));
                        } else {
                            assert!(!t.tombstone(&[k], Revision::new(rev + 1, 0)));
                        }
                    }
                    Step::Compact => {
                        compacted = rev;
                        t.compact(rev);
                    }
                }
                for k in 0u8..4 {
                    for at in compacted.max(1)..=rev {
                        let got = t.get(&[k], at).map(|a| (a.created.main, a.modified.main, a.version));
                        proptest::prop_assert_eq!(got, model(&history, k, at), "key {} at {}", k, at);
                    }
                }
            }
        }
    }
}
