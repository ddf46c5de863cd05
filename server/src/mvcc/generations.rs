//! One key's full history: generations of revisions, as etcd's keyIndex.
//!
//! A generation runs from a key's creation to its deletion (tombstone). The
//! last generation is open (possibly empty, right after a delete). Example for
//! put@1, put@2, del@3, put@4: generations `[1,2,3(t)]`, `[4]`.
//! [`KeyIndex`](super::key_index::KeyIndex) keeps this only for keys that
//! have more than one revision.

use std::collections::HashSet;

use smallvec::SmallVec;

use super::revision::Revision;
use super::revs::Revs;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Version of the key at the generation's last revision.
    pub ver: i64,
    /// First revision of the generation.
    pub created: Revision,
    /// Oldest first, delta-encoded ([`Revs`]): inline up to ~4 revisions.
    pub revs: Revs,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// The newest revision with `main <= at`, and its position.
    fn newest_at_or_before(&self, at: i64) -> Option<(usize, Revision)> {
        self.revs.newest_at_or_before(at)
    }
}

/// What a key looked like at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generations {
    /// Inline while the key has one generation. (etcd also keeps the last
    /// modification; here it is the last revision of the generations, and
    /// not storing it saves 16 bytes per key.)
    pub generations: SmallVec<[Generation; 1]>,
}

impl Default for Generations {
    fn default() -> Self {
        Self { generations: smallvec::smallvec![Generation::default()] }
    }
}

impl Generations {
    /// A live key with the one revision `rev` (created there, version 1).
    pub fn once(rev: Revision) -> Self {
        Self { generations: smallvec::smallvec![Generation { ver: 1, created: rev, revs: Revs::from_iter([rev]) }] }
    }

    /// `Some(rev)` when this is exactly [`once(rev)`](Self::once).
    pub fn as_once(&self) -> Option<Revision> {
        match &self.generations[..] {
            [g] if g.ver == 1 && g.revs.len() == 1 && g.revs.last() == Some(g.created) => Some(g.created),
            _ => None,
        }
    }

    /// True when the key exists at the latest revision.
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    /// Records a put at `rev`. Revisions must increase.
    pub fn put(&mut self, rev: Revision) {
        debug_assert!(Some(rev) > self.last_revision(), "put with a smaller revision");
        let g = self.generations.last_mut().expect("at least one generation");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// The newest revision of the key (its last modification or deletion).
    pub fn last_revision(&self) -> Option<Revision> {
        self.generations.iter().rev().find_map(|g| g.revs.last())
    }

    /// Records a delete at `rev`, closing the current generation. Returns false
    /// when the key is already deleted.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// Restores a live key from the backend at start.
    pub fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        let g = self.generations.last_mut().expect("at least one generation");
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(modified);
        g.ver = ver;
    }

    /// Restores a tombstone from the backend at start.
    pub fn restore_tombstone(&mut self, rev: Revision) {
        let g = self.generations.last_mut().expect("at least one generation");
        if g.revs.is_empty() {
            g.ver = 1;
        } else {
            g.ver += 1;
        }
        g.revs.push(rev);
        self.generations.push(Generation::default());
    }

    /// True when the index holds no revision at all.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The generation alive at `at`, if the key existed then.
    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.revs.is_empty() {
                continue;
            }
            if i != last && g.revs.last().expect("non-empty").main <= at {
                // Deleted at or before `at`.
                return None;
            }
            if g.revs.first().expect("non-empty").main <= at {
                return Some(g);
            }
        }
        None
    }

    /// The key's state at revision `at`, or None if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let g = self.find_generation(at)?;
        let (n, modified) = g.newest_at_or_before(at)?;
        Some(KeyAt { modified, created: g.created, version: g.ver - (g.revs.len() - n - 1) as i64 })
    }

    /// Revisions with `main >= rev`, keeping only the last sub revision per main.
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        let since = Revision::new(rev, 0);
        let mut gi = self.generations.len() - 1;
        while gi > 0 {
            let g = &self.generations[gi];
            if !g.is_empty() && since > g.created {
                break;
            }
            gi -= 1;
        }
        let mut out: Vec<Revision> = Vec::new();
        for g in &self.generations[gi..] {
            for r in g.revs.iter() {
                if since > r {
                    continue;
                }
                match out.last_mut() {
                    Some(l) if l.main == r.main => *l = r,
                    _ => out.push(r),
                }
            }
        }
        out
    }

    /// The generation and revision position that survive compaction at `at`;
    /// adds the surviving revision to `keep`.
    fn do_compact(&self, at: i64, keep: &mut HashSet<Revision>) -> (usize, Option<(usize, Revision)>) {
        let mut gi = 0;
        while gi < self.generations.len() - 1 {
            let g = &self.generations[gi];
            if g.revs.last().expect("closed generations are non-empty").main >= at {
                break;
            }
            gi += 1;
        }
        let g = &self.generations[gi];
        let ri = g.newest_at_or_before(at);
        if let Some((_, rev)) = ri {
            keep.insert(rev);
        }
        (gi, ri)
    }

    /// Drops everything older than the newest revision at or before `at`.
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        let (gi, ri) = self.do_compact(at, keep);
        if let Some((ri, _)) = ri {
            self.generations[gi].revs.drop_oldest(ri);
        }
        self.generations.drain(..gi);
    }

    /// Like [`compact`](Self::compact) but only computes what would be kept,
    /// leaving the index untouched (used for hashing at a revision).
    pub fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gi, ri) = self.do_compact(at, keep);
        let g = &self.generations[gi];
        if let Some((ri, rev)) = ri
            && ri == g.revs.len() - 1
            && gi != self.generations.len() - 1
        {
            // A tombstone is not kept.
            keep.remove(&rev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: i64) -> Revision {
        Revision::new(m, 0)
    }

    /// put@2 put@4 del@6 put@8 put@10 del@12 put@14 put@16
    fn sample() -> Generations {
        let mut ki = Generations::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki.put(r(10));
        assert!(ki.tombstone(r(12)));
        ki.put(r(14));
        ki.put(r(16));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = sample();
        assert_eq!(ki.get(1), None);
        assert_eq!(ki.get(3), Some(KeyAt { modified: r(2), created: r(2), version: 1 }));
        assert_eq!(ki.get(5), Some(KeyAt { modified: r(4), created: r(2), version: 2 }));
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7), None);
        assert_eq!(ki.get(9), Some(KeyAt { modified: r(8), created: r(8), version: 1 }));
        assert_eq!(ki.get(13), None);
        assert_eq!(ki.get(100), Some(KeyAt { modified: r(16), created: r(14), version: 2 }));
    }

    #[test]
    fn tombstone_of_deleted_key_is_refused() {
        let mut ki = Generations::default();
        ki.put(r(1));
        assert!(ki.tombstone(r(2)));
        assert!(!ki.tombstone(r(3)));
    }

    #[test]
    fn compact_keeps_newest_at_or_before() {
        let mut ki = sample();
        let mut keep = HashSet::new();
        ki.compact(5, &mut keep);
        assert_eq!(keep, HashSet::from([r(4)]));
        assert_eq!(ki.get(5).map(|k| k.version), Some(2));
        let mut keep = HashSet::new();
        ki.compact(7, &mut keep);
        assert!(keep.is_empty(), "a generation deleted before the compaction point is dropped");
        assert_eq!(ki.generations[0].revs.iter().collect::<Vec<_>>(), vec![r(8), r(10), r(12)]);
        let mut keep = HashSet::new();
        ki.compact(12, &mut keep);
        assert_eq!(keep, HashSet::from([r(12)]));
        let mut keep = HashSet::new();
        ki.compact(13, &mut keep);
        assert!(keep.is_empty());
        assert_eq!(ki.generations.len(), 1);
        assert_eq!(ki.get(16).map(|k| k.version), Some(2));
    }

    #[test]
    fn keep_skips_tombstones() {
        let ki = sample();
        let mut keep = HashSet::new();
        ki.keep(6, &mut keep);
        assert!(keep.is_empty());
        let mut keep = HashSet::new();
        ki.keep(11, &mut keep);
        assert_eq!(keep, HashSet::from([r(10)]));
    }

    #[test]
    fn since_dedups_main() {
        let mut ki = Generations::default();
        ki.put(Revision::new(1, 0));
        ki.put(Revision::new(1, 1));
        ki.put(Revision::new(2, 0));
        assert_eq!(ki.since(1), vec![Revision::new(1, 1), Revision::new(2, 0)]);
        assert_eq!(ki.since(2), vec![Revision::new(2, 0)]);
    }
}
