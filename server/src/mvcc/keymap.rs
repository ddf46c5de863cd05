//! treeIndex's ordered map from user key to value, with keys front-coded.
//!
//! Kubernetes' keys share long prefixes (`/registry/pods/<namespace>/`), and
//! neighbours in key order share more. A `BTreeMap<Box<[u8]>, KeyIndex>`
//! spent about 100 bytes on each of a million such keys: the key on the
//! heap (47 bytes) and a 32-byte slot in B-tree nodes two-thirds full.
//!
//! Here keys sit in chunks of up to [`MAX_ENTRIES`], in key order, each key
//! written as the length it shares with the key before it, then the rest
//! (a chunk's first key whole); the values sit beside them in a vector. A
//! B-tree finds a chunk by a lower bound of its keys.
//! - A lookup scans one chunk and compares only the bytes that differ from
//!   the previous key; it rebuilds no key.
//! - An insert or a removal rewrites at most two entries of one chunk, from
//!   what the lookup learnt: it rebuilds no key either.
//! - A chunk over the limit splits: in the middle, or, when the new key is
//!   its last, just before it, so that keys loaded in order fill chunks.
//! - A chunk under a quarter full merges with a neighbour when they fit.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, ControlFlow};

use super::varint;

/// Most entries in a chunk: a lookup scans up to this many.
const MAX_ENTRIES: usize = 64;
/// A chunk below this many entries merges with a neighbour.
const MIN_ENTRIES: usize = MAX_ENTRIES / 4;
/// Two chunks merge only if the result has room to grow before it splits.
const MERGED_ENTRIES: usize = MAX_ENTRIES * 3 / 4;
/// A chunk of long keys splits above this many bytes of keys, so that an
/// insert moves a bounded number of bytes.
const MAX_KEY_BYTES: usize = 16 << 10;

pub struct KeyMap<V> {
    /// Chunks by a lower bound of their keys: every key of a chunk is at
    /// least its bound and below the next chunk's bound. The bound is the
    /// chunk's first key when the chunk was made; that key may have been
    /// removed since, and the bound stays.
    chunks: BTreeMap<Box<[u8]>, Chunk<V>>,
}

/// Keys in order, each as `varint(shared) varint(rest.len()) rest`, where
/// `shared` is how many leading bytes it has in common with the key before
/// it (0 for the first); `vals[i]` belongs to the i-th key.
struct Chunk<V> {
    keys: Vec<u8>,
    vals: Vec<V>,
}

/// One entry of a chunk's keys.
struct Entry<'a> {
    /// Where the next entry starts.
    end: usize,
    shared: usize,
    rest: &'a [u8],
}

#[inline]
fn entry_at(keys: &[u8], start: usize) -> Entry<'_> {
    let mut b = keys.get(start..).unwrap_or_default();
    let shared = varint::take(&mut b) as usize;
    let n = (varint::take(&mut b) as usize).min(b.len());
    Entry { end: keys.len() - b.len() + n, shared, rest: &b[..n] }
}

/// Appends an entry that shares `shared` bytes with the key before it and
/// goes on with `rest` (in parts).
fn put_entry(out: &mut Vec<u8>, shared: usize, rest: &[&[u8]]) {
    let len: usize = rest.iter().map(|r| r.len()).sum();
    let (mut head, mut n) = ([0u8; 2 * varint::MAX], 0);
    varint::put(&mut head, &mut n, shared as u64);
    varint::put(&mut head, &mut n, len as u64);
    out.extend_from_slice(&head[..n]);
    for r in rest {
        out.extend_from_slice(r);
    }
}

/// Appends `key`'s entry after `prev` to `out`.
fn encode(out: &mut Vec<u8>, prev: &[u8], key: &[u8]) {
    let shared = common_prefix(prev, key);
    put_entry(out, shared, &[&key[shared..]]);
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Rebuilds a chunk's keys one after another.
struct Walk<'a> {
    keys: &'a [u8],
    /// Where the next entry starts.
    pos: usize,
    /// The index of the next entry.
    next: usize,
    /// The key last walked over.
    key: Vec<u8>,
}

impl<'a> Walk<'a> {
    fn new(keys: &'a [u8]) -> Self {
        Walk { keys, pos: 0, next: 0, key: Vec::new() }
    }

    /// Moves to the next key (then in `self.key`); returns its index.
    fn advance(&mut self) -> Option<usize> {
        if self.pos >= self.keys.len() {
            return None;
        }
        let e = entry_at(self.keys, self.pos);
        self.key.truncate(e.shared);
        self.key.extend_from_slice(e.rest);
        self.pos = e.end;
        self.next += 1;
        Some(self.next - 1)
    }
}

/// Where a key is in a chunk, or where it would go.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// It is the i-th key, whose entry starts at `start`.
    Found {
        i: usize,
        start: usize,
    },
    Missing(Gap),
}

/// Where a missing key would go: as the i-th key, its entry starting at
/// `start`, sharing `matched` bytes with the key before it.
#[derive(Debug, Clone, Copy)]
struct Gap {
    i: usize,
    start: usize,
    matched: usize,
    next: Option<Next>,
}

/// The entry a missing key would go before: where it ends, how much it
/// shares with the missing key, and where its rest goes on after that.
#[derive(Debug, Clone, Copy)]
struct Next {
    end: usize,
    shared: usize,
    skip: usize,
}

impl<V> Chunk<V> {
    fn new() -> Self {
        Chunk { keys: Vec::new(), vals: Vec::new() }
    }

    fn len(&self) -> usize {
        self.vals.len()
    }

    /// Where `key` is or would go.
    ///
    /// `matched` is how many leading bytes the key before entry `i` shares
    /// with `key`, that key being smaller. If entry `i` shares more than
    /// that with the key before, it is smaller than `key` too; if less, it
    /// differs from `key` at a byte where it is larger (keys increase).
    /// Only when it shares exactly that much are bytes compared.
    fn place(&self, key: &[u8]) -> Place {
        let (mut start, mut matched, mut i) = (0, 0, 0);
        while start < self.keys.len() {
            let e = entry_at(&self.keys, start);
            if e.shared < matched {
                let next = Next { end: e.end, shared: e.shared, skip: 0 };
                return Place::Missing(Gap { i, start, matched, next: Some(next) });
            }
            if e.shared == matched {
                let want = &key[matched..];
                let n = common_prefix(e.rest, want);
                match (e.rest.get(n), want.get(n)) {
                    (None, None) => return Place::Found { i, start },
                    (Some(have), w) if w.is_none_or(|w| have > w) => {
                        let next = Next { end: e.end, shared: matched + n, skip: n };
                        return Place::Missing(Gap { i, start, matched, next: Some(next) });
                    }
                    _ => matched += n,
                }
            }
            start = e.end;
            i += 1;
        }
        Place::Missing(Gap { i, start, matched, next: None })
    }

    fn find(&self, key: &[u8]) -> Option<usize> {
        match self.place(key) {
            Place::Found { i, .. } => Some(i),
            Place::Missing(_) => None,
        }
    }

    /// The m-th key, rebuilt, and where its entry starts and ends.
    fn key_at(&self, m: usize) -> Option<(Vec<u8>, usize, usize)> {
        let mut w = Walk::new(&self.keys);
        let mut start = 0;
        while let Some(i) = w.advance() {
            if i == m {
                return Some((w.key, start, w.pos));
            }
            start = w.pos;
        }
        None
    }

    /// The last key, rebuilt.
    fn last_key(&self) -> Vec<u8> {
        let mut w = Walk::new(&self.keys);
        while w.advance().is_some() {}
        w.key
    }

    /// Replaces `keys[range]` with `with`, growing by an eighth at a time.
    fn splice_keys(&mut self, range: std::ops::Range<usize>, with: &[u8]) {
        let grow = with.len().saturating_sub(range.len());
        if self.keys.capacity() - self.keys.len() < grow {
            self.keys.reserve_exact(grow.max(self.keys.len() / 8));
        }
        self.keys.splice(range, with.iter().copied());
    }

    /// Inserts `key` where [`place`](Self::place) found it missing: its
    /// entry, and the next key's written again against it.
    fn insert(&mut self, Gap { i, start, matched, next }: Gap, key: &[u8], val: V) {
        let mut with = Vec::with_capacity(2 * (key.len() - matched + 2 * varint::MAX));
        put_entry(&mut with, matched, &[&key[matched..]]);
        let end = match next {
            Some(Next { end, shared, skip }) => {
                put_entry(&mut with, shared, &[&entry_at(&self.keys, start).rest[skip..]]);
                end
            }
            None => start,
        };
        self.splice_keys(start..end, &with);
        if self.vals.len() == self.vals.capacity() {
            self.vals.reserve_exact((self.vals.len() / 8).max(4));
        }
        self.vals.insert(i, val);
    }

    /// Removes the i-th key, whose entry starts at `start`, writing the one
    /// after it again against the one before it: they share the lesser of
    /// what each shares with the removed key.
    fn remove(&mut self, i: usize, start: usize) -> V {
        let e = entry_at(&self.keys, start);
        let (mut with, mut to) = (Vec::new(), e.end);
        if e.end < self.keys.len() {
            let n = entry_at(&self.keys, e.end);
            match n.shared.checked_sub(e.shared) {
                Some(more) => put_entry(&mut with, e.shared, &[&e.rest[..more.min(e.rest.len())], n.rest]),
                None => put_entry(&mut with, n.shared, &[n.rest]),
            }
            to = n.end;
        }
        self.splice_keys(start..to, &with);
        let val = self.vals.remove(i);
        if self.keys.capacity() > self.keys.len() * 5 / 4 + 64 {
            self.keys.shrink_to_fit();
        }
        if self.vals.capacity() > self.vals.len() + self.vals.len() / 4 + 4 {
            self.vals.shrink_to_fit();
        }
        val
    }

    /// Splits off the keys from the m-th on; returns the new chunk's first
    /// key (its bound) and the chunk.
    fn split_off(&mut self, m: usize) -> Option<(Box<[u8]>, Chunk<V>)> {
        let (first, start, end) = self.key_at(m)?;
        let mut keys = Vec::with_capacity(first.len() + 2 * varint::MAX + self.keys.len() - end);
        encode(&mut keys, &[], &first);
        keys.extend_from_slice(&self.keys[end..]);
        self.keys.truncate(start);
        self.keys.shrink_to_fit();
        let vals = self.vals.split_off(m);
        self.vals.shrink_to_fit();
        Some((first.into_boxed_slice(), Chunk { keys, vals }))
    }

    /// Appends `next`, whose keys all follow this chunk's.
    fn append(&mut self, mut next: Chunk<V>) {
        let last = self.last_key();
        let first = entry_at(&next.keys, 0);
        let mut with = Vec::with_capacity(next.keys.len() + 2 * varint::MAX);
        encode(&mut with, &last, first.rest);
        with.extend_from_slice(&next.keys[first.end..]);
        let at = self.keys.len();
        self.splice_keys(at..at, &with);
        self.vals.append(&mut next.vals);
    }
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { chunks: BTreeMap::new() }
    }
}

impl<V> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMap").field("chunks", &self.chunks.len()).finish()
    }
}

/// Whether `key` is within the lower bound `from`.
fn after(key: &[u8], from: Bound<&[u8]>) -> bool {
    match from {
        Bound::Included(f) => key >= f,
        Bound::Excluded(f) => key > f,
        Bound::Unbounded => true,
    }
}

/// Whether `key` is within the upper bound `to`.
fn before(key: &[u8], to: Bound<&[u8]>) -> bool {
    match to {
        Bound::Included(t) => key <= t,
        Bound::Excluded(t) => key < t,
        Bound::Unbounded => true,
    }
}

/// A visit's bounds, checked key by key only where they can matter: `from`
/// until a key is past it, `to` only in a chunk whose successor's bound is
/// beyond it.
struct Span<'a> {
    from: Bound<&'a [u8]>,
    to: Bound<&'a [u8]>,
    started: bool,
}

impl<'a> Span<'a> {
    fn new(from: Bound<&'a [u8]>, to: Bound<&'a [u8]>) -> Self {
        Span { from, to, started: false }
    }

    /// Whether every key of a chunk followed by a chunk bound at `next` is
    /// within `to` (they are all below `next`).
    fn whole(&self, next: Option<&[u8]>) -> bool {
        match (self.to, next) {
            (Bound::Unbounded, _) => true,
            (Bound::Included(t) | Bound::Excluded(t), Some(n)) => n <= t,
            (_, None) => false,
        }
    }

    /// Calls `take` with each key of a chunk's `keys` within the span and
    /// its index; breaks at the first key past `to`, or when `take` does.
    fn walk(
        &mut self,
        keys: &[u8],
        whole: bool,
        mut take: impl FnMut(&[u8], usize) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut w = Walk::new(keys);
        while let Some(i) = w.advance() {
            if !self.started {
                if !after(&w.key, self.from) {
                    continue;
                }
                self.started = true;
            }
            if !whole && !before(&w.key, self.to) {
                return ControlFlow::Break(());
            }
            take(&w.key, i)?;
        }
        ControlFlow::Continue(())
    }
}

impl<V> KeyMap<V> {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.chunks.values().map(Chunk::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The chunk that holds `key` if any does (the last bound at or below
    /// it), with its bound.
    fn holder(&self, key: &[u8]) -> Option<(&[u8], &Chunk<V>)> {
        self.chunks.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back().map(|(b, c)| (&b[..], c))
    }

    /// [`holder`](Self::holder), mutable.
    fn holder_mut(&mut self, key: &[u8]) -> Option<(&[u8], &mut Chunk<V>)> {
        self.chunks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back().map(|(b, c)| (&b[..], c))
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        let (_, c) = self.holder(key)?;
        c.vals.get(c.find(key)?)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (_, c) = self.holder_mut(key)?;
        let i = c.find(key)?;
        c.vals.get_mut(i)
    }

    /// Sets `key` to `val`; returns the value it replaced.
    #[cfg(test)]
    pub fn insert(&mut self, key: &[u8], val: V) -> Option<V> {
        let mut old = None;
        self.upsert(key, |cur| match cur {
            Some(cur) => {
                old = Some(std::mem::replace(cur, val));
                None
            }
            None => Some(val),
        });
        old
    }

    /// Looks `key` up once: `f` gets its value if it has one, and otherwise
    /// returns the value to insert, if any.
    pub fn upsert(&mut self, key: &[u8], f: impl FnOnce(Option<&mut V>) -> Option<V>) {
        match self.chunks.first_key_value() {
            None => {
                if let Some(val) = f(None) {
                    let mut c = Chunk::new();
                    c.insert(Gap { i: 0, start: 0, matched: 0, next: None }, key, val);
                    self.chunks.insert(key.into(), c);
                }
                return;
            }
            Some((b, _)) if key < &b[..] => {
                // Below every bound: the first chunk takes `key` as its bound.
                if let Some((_, c)) = self.chunks.pop_first() {
                    self.chunks.insert(key.into(), c);
                }
            }
            Some(_) => {}
        }
        let Some((_, c)) = self.holder_mut(key) else { return };
        let gap = match c.place(key) {
            Place::Found { i, .. } => {
                f(c.vals.get_mut(i));
                return;
            }
            Place::Missing(gap) => gap,
        };
        let Some(val) = f(None) else { return };
        let i = gap.i;
        c.insert(gap, key, val);
        let split = if c.len() > MAX_ENTRIES {
            // Keys loaded in order go last: leave the full chunk full.
            Some(if i + 1 == c.len() { i } else { c.len() / 2 })
        } else if c.keys.len() > MAX_KEY_BYTES && c.len() > 1 {
            Some(c.len() / 2)
        } else {
            None
        };
        if let Some((bound, right)) = split.and_then(|m| c.split_off(m)) {
            self.chunks.insert(bound, right);
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let (bound, c) = self.holder_mut(key)?;
        let Place::Found { i, start } = c.place(key) else {
            return None;
        };
        let val = c.remove(i, start);
        if c.len() < MIN_ENTRIES {
            let bound = bound.to_vec();
            self.rebalance(&bound);
        }
        Some(val)
    }

    /// Removes the chunk at `bound` if it is empty, or merges it with a
    /// neighbour when the two fit in one.
    fn rebalance(&mut self, bound: &[u8]) {
        let fits = |a: &Chunk<V>, b: &Chunk<V>| {
            a.len() + b.len() <= MERGED_ENTRIES && a.keys.len() + b.keys.len() <= MAX_KEY_BYTES
        };
        let Some(c) = self.chunks.get(bound) else { return };
        if c.len() == 0 {
            self.chunks.remove(bound);
            return;
        }
        let next = self.chunks.range::<[u8], _>((Bound::Excluded(bound), Bound::Unbounded)).next();
        if let Some((nb, n)) = next
            && fits(c, n)
        {
            let nb = nb.clone();
            if let (Some(n), Some(c)) = (self.chunks.remove(&nb), self.chunks.get_mut(bound)) {
                c.append(n);
            }
            return;
        }
        let prev = self.chunks.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(bound))).next_back();
        if let Some((pb, p)) = prev
            && fits(p, c)
        {
            let pb = pb.clone();
            if let (Some(c), Some(p)) = (self.chunks.remove(bound), self.chunks.get_mut(&pb)) {
                p.append(c);
            }
        }
    }

    /// The bound of the first chunk that may hold keys from `from` on.
    fn start_bound(&self, from: Bound<&[u8]>) -> Option<&[u8]> {
        match from {
            Bound::Included(k) | Bound::Excluded(k) => self.holder(k).map(|(b, _)| b),
            Bound::Unbounded => None,
        }
    }

    /// Calls `f` with each key within `from` and `to` and its value, in key
    /// order, until it breaks.
    pub fn visit(&self, from: Bound<&[u8]>, to: Bound<&[u8]>, mut f: impl FnMut(&[u8], &V) -> ControlFlow<()>) {
        let start = self.start_bound(from).map_or(Bound::Unbounded, Bound::Included);
        let mut chunks = self.chunks.range::<[u8], _>((start, Bound::Unbounded)).peekable();
        let mut span = Span::new(from, to);
        while let Some((_, c)) = chunks.next() {
            let whole = span.whole(chunks.peek().map(|(b, _)| &b[..]));
            if span.walk(&c.keys, whole, |k, i| f(k, &c.vals[i])).is_break() {
                return;
            }
        }
    }

    /// [`visit`](Self::visit), with each value mutable.
    pub fn visit_mut(
        &mut self,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        mut f: impl FnMut(&[u8], &mut V) -> ControlFlow<()>,
    ) {
        let start = self.start_bound(from).map(<[u8]>::to_vec);
        let start = start.as_deref().map_or(Bound::Unbounded, Bound::Included);
        let mut chunks = self.chunks.range_mut::<[u8], _>((start, Bound::Unbounded)).peekable();
        let mut span = Span::new(from, to);
        while let Some((_, Chunk { keys, vals })) = chunks.next() {
            let whole = span.whole(chunks.peek().map(|(b, _)| &b[..]));
            if span.walk(keys, whole, |k, i| f(k, &mut vals[i])).is_break() {
                return;
            }
        }
    }

    /// Every value, in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.chunks.values().flat_map(|c| c.vals.iter())
    }
}

#[cfg(test)]
mod tests;
