//! A generation's revisions, oldest first, kept as varint deltas.
//!
//! A key updated between two compactions holds one revision per update in
//! treeIndex. As 16-byte revisions in a vector that doubles, a key with 37
//! of them held 1 KiB (100 MB for 100,000 such keys in an 8 GB backend).
//! Here each revision is the LEB128 varint of its main revision's distance
//! from the previous one, then of its sub revision: 3-4 bytes for keys
//! spread over a large store, up to 16 bytes inline (no allocation), and
//! the buffer grows by an eighth rather than doubling. The newest revision
//! is also kept whole, so that reads at the current revision and appends
//! decode nothing. Arithmetic wraps, so any `i64` pair round-trips.

use smallvec::SmallVec;

use super::revision::Revision;
use super::varint;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revs {
    /// The newest revision (meaningless while empty).
    last: Revision,
    len: u32,
    bytes: SmallVec<[u8; 16]>,
}

impl Revs {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first(&self) -> Option<Revision> {
        self.iter().next()
    }

    pub fn last(&self) -> Option<Revision> {
        (!self.is_empty()).then_some(self.last)
    }

    /// Appends `rev`, which should be newer than [`last`](Self::last).
    pub fn push(&mut self, rev: Revision) {
        let prev = if self.is_empty() { 0 } else { self.last.main };
        let (mut buf, mut n) = ([0u8; 2 * varint::MAX], 0);
        varint::put(&mut buf, &mut n, rev.main.wrapping_sub(prev) as u64);
        varint::put(&mut buf, &mut n, rev.sub as u64);
        let room = self.bytes.capacity() - self.bytes.len();
        if room < n {
            // An eighth more at a time: little slack, few copies.
            self.bytes.reserve_exact(n.max(self.bytes.len() / 8));
        }
        self.bytes.extend_from_slice(&buf[..n]);
        self.last = rev;
        self.len += 1;
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter { bytes: &self.bytes, prev: 0, left: self.len }
    }

    /// The newest revision with `main <= at`, with its position.
    pub fn newest_at_or_before(&self, at: i64) -> Option<(usize, Revision)> {
        if self.is_empty() {
            return None;
        }
        if self.last.main <= at {
            return Some((self.len() - 1, self.last));
        }
        // Revisions increase: the answer is the last one before the first
        // that is too new.
        self.iter().enumerate().take_while(|(_, r)| r.main <= at).last()
    }

    /// Drops the `n` oldest revisions.
    pub fn drop_oldest(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let mut kept: Revs = self.iter().skip(n).collect();
        kept.bytes.shrink_to_fit();
        *self = kept;
    }
}

impl FromIterator<Revision> for Revs {
    fn from_iter<I: IntoIterator<Item = Revision>>(iter: I) -> Self {
        let mut revs = Revs::default();
        for r in iter {
            revs.push(r);
        }
        revs
    }
}

/// The revisions of a [`Revs`], oldest first.
pub struct Iter<'a> {
    bytes: &'a [u8],
    prev: i64,
    left: u32,
}

impl Iterator for Iter<'_> {
    type Item = Revision;

    fn next(&mut self) -> Option<Revision> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let main = self.prev.wrapping_add(varint::take(&mut self.bytes) as i64);
        let sub = varint::take(&mut self.bytes) as i64;
        self.prev = main;
        Some(Revision::new(main, sub))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_large_store_s_revisions_take_a_few_bytes_each() {
        // A key put every ~100,000 revisions, 37 times.
        let revs: Revs = (1..=37).map(|i| Revision::new(i * 100_003, 0)).collect();
        assert_eq!(revs.len(), 37);
        assert!(revs.bytes.len() <= 37 * 4, "{} bytes", revs.bytes.len());
        assert!(revs.bytes.capacity() <= revs.bytes.len() * 9 / 8 + 4, "capacity {}", revs.bytes.capacity());
        // A few revisions stay inline.
        let few: Revs = (1..=4).map(|i| Revision::new(i, 0)).collect();
        assert!(!few.bytes.spilled());
    }

    fn revisions() -> impl Strategy<Value = Vec<Revision>> {
        // Increasing (main, sub), with the occasional huge step; and any
        // pairs at all, which must round-trip too.
        let increasing = proptest::collection::vec((0i64..1 << 40, 0i64..3, any::<bool>()), 0..60).prop_map(|steps| {
            let mut main = 1i64;
            steps
                .into_iter()
                .map(|(step, sub, same)| {
                    main += if same { 0 } else { step % 1000 + 1 };
                    Revision::new(main, sub)
                })
                .collect()
        });
        let any_pairs = proptest::collection::vec((any::<i64>(), any::<i64>()), 0..20)
            .prop_map(|v| v.into_iter().map(|(m, s)| Revision::new(m, s)).collect());
        prop_oneof![increasing, any_pairs]
    }

    proptest! {
        #[test]
        fn revs_behave_as_a_vector(model in revisions(), at in any::<i64>(), drop in 0usize..70) {
            let mut revs: Revs = model.iter().copied().collect();
            prop_assert_eq!(revs.iter().collect::<Vec<_>>(), model.clone());
            prop_assert_eq!(revs.len(), model.len());
            prop_assert_eq!(revs.first(), model.first().copied());
            prop_assert_eq!(revs.last(), model.last().copied());
            if model.windows(2).all(|w| w[0].main <= w[1].main) {
                let want = model.iter().rposition(|r| r.main <= at).map(|i| (i, model[i]));
                prop_assert_eq!(revs.newest_at_or_before(at), want);
                let probe = model.get(drop % model.len().max(1)).map_or(0, |r| r.main);
                let want = model.iter().rposition(|r| r.main <= probe).map(|i| (i, model[i]));
                prop_assert_eq!(revs.newest_at_or_before(probe), want);
            }
            let drop = drop.min(model.len());
            revs.drop_oldest(drop);
            prop_assert_eq!(revs.iter().collect::<Vec<_>>(), model[drop..].to_vec());
            prop_assert_eq!(revs.last(), model.last().copied().filter(|_| drop < model.len()));
        }
    }
}
