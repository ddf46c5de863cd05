//! One key's entry in treeIndex, sized for the common case.
//!
//! Most keys in a large store were written once: one generation holding one
//! revision, version 1. Such a key is kept as that revision alone (16 bytes
//! with the enum's tag, beside its key in a treeIndex chunk); only a key with more
//! history (updates, deletes, or a compaction that left an older creation
//! revision) moves its [`Generations`] to the heap. Every answer is the same
//! as the full history's would be; `tests` check that against it.

use std::collections::HashSet;

use super::generations::Generations;
pub use super::generations::KeyAt;
use super::revision::Revision;

/// A revision whose sub revision fits in 32 bits: 12 bytes, aligned to 4 so
/// that the enum's tag fits beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
struct Packed {
    main: i64,
    sub: u32,
}

impl Packed {
    fn new(rev: Revision) -> Option<Self> {
        Some(Self { main: rev.main, sub: u32::try_from(rev.sub).ok()? })
    }

    fn rev(self) -> Revision {
        Revision::new(self.main, i64::from(self.sub))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Repr {
    /// No revision at all (only while being built or just before removal).
    #[default]
    Empty,
    /// A live key created at this revision and never changed since.
    Once(Packed),
    /// Anything else.
    Full(Box<Generations>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyIndex(Repr);

impl KeyIndex {
    /// The full history, moving to it from a compact form.
    fn full(&mut self) -> &mut Generations {
        if !matches!(self.0, Repr::Full(_)) {
            let g = match self.0 {
                Repr::Once(p) => Generations::once(p.rev()),
                _ => Generations::default(),
            };
            self.0 = Repr::Full(Box::new(g));
        }
        match &mut self.0 {
            Repr::Full(g) => g,
            _ => unreachable!("just made full"),
        }
    }

    /// Back to a compact form where the history allows it.
    fn shrink(&mut self) {
        if let Repr::Full(g) = &self.0 {
            if g.is_empty() {
                self.0 = Repr::Empty;
            } else if let Some(p) = g.as_once().and_then(Packed::new) {
                self.0 = Repr::Once(p);
            }
        }
    }

    /// Records a put at `rev`. Revisions must increase.
    pub fn put(&mut self, rev: Revision) {
        if let (Repr::Empty, Some(p)) = (&self.0, Packed::new(rev)) {
            self.0 = Repr::Once(p);
            return;
        }
        self.full().put(rev);
    }

    /// Records a delete at `rev`, closing the current generation. Returns false
    /// when the key is already deleted.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        match self.0 {
            Repr::Empty => false,
            _ => self.full().tombstone(rev),
        }
    }

    /// Restores a live key from the backend at start.
    pub fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        if let (Repr::Empty, true, Some(p)) = (&self.0, created == modified && ver == 1, Packed::new(modified)) {
            self.0 = Repr::Once(p);
            return;
        }
        self.full().restore(created, modified, ver);
    }

    /// Restores a tombstone from the backend at start.
    pub fn restore_tombstone(&mut self, rev: Revision) {
        self.full().restore_tombstone(rev);
    }

    /// The newest revision of the key (its last modification or deletion).
    pub fn last_revision(&self) -> Option<Revision> {
        match &self.0 {
            Repr::Empty => None,
            Repr::Once(p) => Some(p.rev()),
            Repr::Full(g) => g.last_revision(),
        }
    }

    /// True when the index holds no revision at all.
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            Repr::Empty => true,
            Repr::Once(_) => false,
            Repr::Full(g) => g.is_empty(),
        }
    }

    /// True when the key exists at the latest revision.
    pub fn is_live(&self) -> bool {
        match &self.0 {
            Repr::Empty => false,
            Repr::Once(_) => true,
            Repr::Full(g) => g.is_live(),
        }
    }

    /// The key's state at revision `at`, or None if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        match &self.0 {
            Repr::Empty => None,
            Repr::Once(p) => (p.main <= at).then(|| KeyAt { modified: p.rev(), created: p.rev(), version: 1 }),
            Repr::Full(g) => g.get(at),
        }
    }

    /// Revisions with `main >= rev`, keeping only the last sub revision per main.
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        match &self.0 {
            Repr::Empty => Vec::new(),
            Repr::Once(p) => {
                if p.main >= rev {
                    vec![p.rev()]
                } else {
                    Vec::new()
                }
            }
            Repr::Full(g) => g.since(rev),
        }
    }

    /// Drops everything older than the newest revision at or before `at`;
    /// adds the surviving revision to `keep`.
    pub fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        match &mut self.0 {
            Repr::Empty => {}
            Repr::Once(p) => {
                if p.main <= at {
                    keep.insert(p.rev());
                }
            }
            Repr::Full(g) => {
                g.compact(at, keep);
                self.shrink();
            }
        }
    }

    /// What [`compact`](Self::compact) would keep, leaving the index untouched.
    pub fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        match &self.0 {
            Repr::Empty => {}
            Repr::Once(p) => {
                if p.main <= at {
                    keep.insert(p.rev());
                }
            }
            Repr::Full(g) => g.keep(at, keep),
        }
    }
}

#[cfg(test)]
mod tests;
