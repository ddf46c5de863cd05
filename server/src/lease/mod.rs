//! Lease: the lessor, as etcd's `server/lease`.
//!
//! Every member keeps the same leases (granted and revoked through raft, by
//! apply) and the same key attachments (made by apply when a put names a
//! lease). Only the primary (the raft leader) keeps expiry times: it renews
//! leases on keep-alive and reports the expired ones, which the server layer
//! revokes by proposing `LeaseRevoke`. Other members hold every lease forever.
//!
//! Durability: a lease is a row of the backend's `lease` table (id → TTL),
//! written by apply in the same batch as the entry's other effects.
//! Attachments are not stored: they are rebuilt from the keys' `lease` field.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::backend::{Backend, BackendError, Table};
use crate::mvcc::{KvStore, MvccError};

/// The largest TTL a lease may ask for, in seconds (etcd's MaxLeaseTTL).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Errors of the lessor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease not found")]
    NotFound,
    #[error("lease already exists")]
    Exists,
    #[error("too large lease TTL")]
    TtlTooLarge,
    #[error("not a primary lessor")]
    NotPrimary,
}

#[derive(Debug)]
struct Lease {
    ttl: i64,
    /// When the lease expires; None while this member is not the primary.
    expiry: Option<Instant>,
    keys: BTreeSet<Vec<u8>>,
    /// When a revoke was last proposed for it (to retry, not to repeat).
    revoke_sent: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Lease>,
    /// Key → the lease it is attached to.
    items: HashMap<Vec<u8>, i64>,
    primary: bool,
    /// The term this member leads, and what each clock gets on top of its
    /// TTL when the lessor is promoted in it.
    leading: Option<(u64, Duration)>,
    /// The highest term whose first entry (its leader's blank entry) apply
    /// has reached.
    started_term: u64,
}

/// What TimeToLive reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Seconds left (truncated, as etcd).
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

pub struct Lessor {
    inner: RwLock<Inner>,
    /// Granted TTLs are raised to this (seconds).
    min_ttl: i64,
}

fn promote_locked(inner: &mut Inner, extend: Duration) {
    inner.primary = true;
    let now = Instant::now();
    for l in inner.leases.values_mut() {
        l.expiry = Some(now + extend + Duration::from_secs(l.ttl as u64));
        l.revoke_sent = None;
    }
}

/// Backend key of a lease.
pub fn lease_key(id: i64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Backend value of a lease: its TTL.
pub fn lease_value(ttl: i64) -> Bytes {
    Bytes::copy_from_slice(&ttl.to_be_bytes())
}

impl Lessor {
    /// `min_ttl` is etcd's minimum lease TTL: ceil(1.5 × election timeout).
    pub fn new(min_ttl: i64) -> Self {
        Self { inner: RwLock::new(Inner::default()), min_ttl: min_ttl.max(1) }
    }

    /// The minimum TTL for an election timeout, as etcd computes it.
    pub fn min_ttl_for(election_timeout: Duration) -> i64 {
        let ms = election_timeout.as_millis() as i64 * 3;
        (ms + 1999) / 2000
    }

    /// (Re)loads the leases from the backend and the attachments from the
    /// live keys the store found when it (re)built its index. The primary
    /// flag is kept; a primary restarts every lease's clock.
    pub fn load(&self, backend: &Backend, store: &KvStore) -> Result<(), MvccError> {
        let mut leases = HashMap::new();
        let mut bad = None;
        backend.scan_committed(Table::Lease, &[], None, |k, v| {
            match (<[u8; 8]>::try_from(k), <[u8; 8]>::try_from(v)) {
                (Ok(k), Ok(v)) => {
                    let lease =
                        Lease { ttl: i64::from_be_bytes(v), expiry: None, keys: BTreeSet::new(), revoke_sent: None };
                    leases.insert(i64::from_be_bytes(k), lease);
                }
                _ => bad = Some(k.to_vec()),
            }
            true
        })?;
        if let Some(k) = bad {
            return Err(MvccError::Backend(BackendError::Storage(format!("corrupt lease row {k:?} in the backend"))));
        }
        // The store found the leased keys while it rebuilt its index.
        let mut items = HashMap::new();
        for (key, id) in store.take_restored_leased_keys() {
            if let Some(l) = leases.get_mut(&id) {
                l.keys.insert(key.clone());
                items.insert(key, id);
            }
        }
        let mut inner = self.inner.write();
        let now = Instant::now();
        if inner.primary {
            for l in leases.values_mut() {
                l.expiry = Some(now + Duration::from_secs(l.ttl as u64));
            }
        }
        inner.leases = leases;
        inner.items = items;
        Ok(())
    }

    pub fn exists(&self, id: i64) -> bool {
        self.inner.read().leases.contains_key(&id)
    }

    /// Apply: grants lease `id`; returns the TTL it got (raised to the minimum).
    pub fn grant(&self, id: i64, ttl: i64) -> Result<i64, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        let mut inner = self.inner.write();
        if inner.leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let ttl = ttl.max(self.min_ttl);
        let expiry = inner.primary.then(|| Instant::now() + Duration::from_secs(ttl as u64));
        inner.leases.insert(id, Lease { ttl, expiry, keys: BTreeSet::new(), revoke_sent: None });
        Ok(ttl)
    }

    /// Apply: removes lease `id`; returns the keys that were attached to it
    /// (the caller deletes them in the same revision).
    pub fn revoke(&self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        let mut inner = self.inner.write();
        let l = inner.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        for k in &l.keys {
            inner.items.remove(k);
        }
        Ok(l.keys.into_iter().collect())
    }

    /// Apply: `key` is now attached to `lease` (0 = none), replacing any
    /// earlier attachment.
    pub fn attach(&self, key: &[u8], lease: i64) {
        let mut inner = self.inner.write();
        let old = inner.items.get(key).copied().unwrap_or(0);
        if old == lease {
            return;
        }
        if old != 0 {
            inner.items.remove(key);
            if let Some(l) = inner.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if lease != 0
            && let Some(l) = inner.leases.get_mut(&lease)
        {
            l.keys.insert(key.to_vec());
            inner.items.insert(key.to_vec(), lease);
        }
    }

    /// Apply: `key` was deleted.
    pub fn detach(&self, key: &[u8]) {
        self.attach(key, 0);
    }

    /// This member became the leader of `term`. As etcd's, the lessor is
    /// promoted only once apply has reached the term's first entry, so that
    /// every grant, revoke and attachment of the terms before is in place
    /// when its clocks start.
    pub fn lead(&self, term: u64, extend: Duration) {
        let mut inner = self.inner.write();
        inner.leading = Some((term, extend));
        if inner.started_term >= term && !inner.primary {
            promote_locked(&mut inner, extend);
        }
    }

    /// Apply reached the first entry of `term`.
    pub fn term_started(&self, term: u64) {
        let mut inner = self.inner.write();
        inner.started_term = inner.started_term.max(term);
        if let Some((t, extend)) = inner.leading
            && t == term
            && !inner.primary
        {
            promote_locked(&mut inner, extend);
        }
    }

    /// Every lease's clock restarts at its full TTL plus `extend` (etcd
    /// gives the old leader's clients time to find the new one).
    pub fn promote(&self, extend: Duration) {
        promote_locked(&mut self.inner.write(), extend);
    }

    /// This member is not (or no longer) the leader: leases never expire here.
    pub fn demote(&self) {
        let mut inner = self.inner.write();
        inner.primary = false;
        inner.leading = None;
        for l in inner.leases.values_mut() {
            l.expiry = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.inner.read().primary
    }

    /// Keep-alive on the primary: restarts the lease's clock; returns its TTL.
    /// An expired lease (its revoke pending) counts as not found.
    pub fn renew(&self, id: i64) -> Result<i64, LeaseError> {
        let mut inner = self.inner.write();
        if !inner.primary {
            return Err(LeaseError::NotPrimary);
        }
        let l = inner.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        let now = Instant::now();
        if l.expiry.is_some_and(|e| e <= now) {
            return Err(LeaseError::NotFound);
        }
        l.expiry = Some(now + Duration::from_secs(l.ttl as u64));
        Ok(l.ttl)
    }

    /// TimeToLive on the primary.
    pub fn status(&self, id: i64, with_keys: bool) -> Result<LeaseStatus, LeaseError> {
        let inner = self.inner.read();
        if !inner.primary {
            return Err(LeaseError::NotPrimary);
        }
        let l = inner.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let remaining = match l.expiry {
            Some(e) => e.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => l.ttl,
        };
        let keys = if with_keys { l.keys.iter().cloned().collect() } else { Vec::new() };
        Ok(LeaseStatus { remaining, granted: l.ttl, keys })
    }

    /// The keys attached to a lease (none if it does not exist).
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.inner.read().leases.get(&id).map(|l| l.keys.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every lease id, in order.
    pub fn leases(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.inner.read().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// On the primary: up to `limit` expired leases whose revoke has not been
    /// proposed within `retry`; they are marked as proposed now.
    pub fn take_expired(&self, limit: usize, retry: Duration) -> Vec<i64> {
        let mut inner = self.inner.write();
        if !inner.primary {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, l) in inner.leases.iter_mut() {
            if out.len() >= limit {
                break;
            }
            let expired = l.expiry.is_some_and(|e| e <= now);
            let due = l.revoke_sent.is_none_or(|t| now.duration_since(t) >= retry);
            if expired && due {
                l.revoke_sent = Some(now);
                out.push(*id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_follows_the_election_timeout() {
        assert_eq!(Lessor::min_ttl_for(Duration::from_millis(1000)), 2);
        assert_eq!(Lessor::min_ttl_for(Duration::from_millis(2000)), 3);
        assert_eq!(Lessor::min_ttl_for(Duration::from_millis(100)), 1);
    }

    #[test]
    fn grant_raises_the_ttl_and_refuses_duplicates() {
        let l = Lessor::new(2);
        assert_eq!(l.grant(7, 1), Ok(2));
        assert_eq!(l.grant(7, 10), Err(LeaseError::Exists));
        assert_eq!(l.grant(8, MAX_LEASE_TTL + 1), Err(LeaseError::TtlTooLarge));
        assert_eq!(l.grant(0, 5), Err(LeaseError::NotFound));
        assert_eq!(l.leases(), vec![7]);
    }

    #[test]
    fn attachments_move_and_revoke_returns_them() {
        let l = Lessor::new(1);
        l.grant(1, 10).unwrap();
        l.grant(2, 10).unwrap();
        l.attach(b"a", 1);
        l.attach(b"b", 1);
        l.attach(b"a", 2);
        l.detach(b"b");
        l.attach(b"c", 1);
        assert_eq!(l.revoke(1), Ok(vec![b"c".to_vec()]));
        assert_eq!(l.revoke(1), Err(LeaseError::NotFound));
        assert_eq!(l.revoke(2), Ok(vec![b"a".to_vec()]));
    }

    #[test]
    fn only_the_primary_renews_and_expires() {
        let l = Lessor::new(1);
        l.grant(1, 1).unwrap();
        assert_eq!(l.renew(1), Err(LeaseError::NotPrimary));
        assert!(l.take_expired(10, Duration::ZERO).is_empty());
        l.promote(Duration::ZERO);
        assert_eq!(l.renew(1), Ok(1));
        assert_eq!(l.renew(9), Err(LeaseError::NotFound));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(l.take_expired(10, Duration::from_secs(60)), vec![1]);
        // Proposed once; not again before the retry interval.
        assert!(l.take_expired(10, Duration::from_secs(60)).is_empty());
        assert_eq!(l.renew(1), Err(LeaseError::NotFound));
        l.demote();
        assert!(l.take_expired(10, Duration::ZERO).is_empty());
    }

    #[test]
    fn a_new_leader_is_promoted_once_its_term_has_started() {
        let l = Lessor::new(1);
        l.grant(1, 10).unwrap();
        // Elected in term 3 while entries of term 2 are still being applied.
        l.term_started(2);
        l.lead(3, Duration::ZERO);
        assert!(!l.is_primary(), "promoted before its term's first entry was applied");
        assert_eq!(l.renew(1), Err(LeaseError::NotPrimary));
        l.term_started(3);
        assert!(l.is_primary());
        assert_eq!(l.renew(1), Ok(10));
        // Its blank entry applied before the leadership was noticed.
        l.demote();
        l.term_started(5);
        l.lead(5, Duration::ZERO);
        assert!(l.is_primary());
        // Leading term 6, then not leading before its first entry applies.
        l.demote();
        l.lead(6, Duration::ZERO);
        l.demote();
        l.term_started(6);
        assert!(!l.is_primary());
    }
}
