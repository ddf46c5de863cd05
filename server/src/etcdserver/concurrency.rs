//! Lock and Election on top of KV, Lease and Watch, built the way etcd's
//! `client/v3/concurrency` builds them (its v3lock and v3election servers run
//! that client inside etcd): a contender's key is `<name>/<lease in hex>`,
//! created with its lease; the contender whose key has the lowest create
//! revision holds the lock (leads); every other waits until the keys created
//! before its own are deleted (released, resigned, or expired with their lease).

use std::sync::Arc;

use kvd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kvd_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kvd_api::etcdserverpb::request_op::Request as Op;
use kvd_api::etcdserverpb::response_op::Response as OpResponse;
use kvd_api::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest,
};
use kvd_api::mvccpb::event::EventType;
use kvd_api::mvccpb::{Event, KeyValue};
use kvd_api::v3electionpb::{LeaderKey, LeaderResponse};
use tokio::sync::mpsc;

use super::kv::Credentials;
use super::{EtcdServer, ServerError};
use crate::watch::{Delivery, WatchSpec};

/// TTL of the lease a Lock without one gets (etcd's default session TTL).
pub const SESSION_TTL: i64 = 60;

/// The end of the range of keys starting with `p`.
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn prefix(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: CompareTarget::Create as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn op(r: Op) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// Deletes a contender's key if the caller goes away before it is done
/// (etcd's Lock deletes it when the client's context ends).
struct DeleteOnDrop {
    server: Arc<EtcdServer>,
    key: Option<Vec<u8>>,
    auth: Credentials,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let (server, auth) = (self.server.clone(), self.auth.clone());
            tokio::spawn(async move {
                let _ = server.delete_range(DeleteRangeRequest { key, ..Default::default() }, &auth).await;
            });
        }
    }
}

impl EtcdServer {
    /// The contender with the lowest (`Ascend`) or highest create revision
    /// under `pfx`, up to `max_create` (0 = any).
    async fn edge(
        &self,
        pfx: &[u8],
        order: SortOrder,
        max_create: i64,
        auth: &Credentials,
    ) -> Result<RangeResponse, ServerError> {
        let r = RangeRequest {
            key: pfx.to_vec(),
            range_end: prefix_end(pfx),
            sort_target: SortTarget::Create as i32,
            sort_order: order as i32,
            limit: 1,
            max_create_revision: max_create,
            ..Default::default()
        };
        self.range(r, auth).await
    }

    /// Waits for a delete of `key` at or after `rev`.
    async fn wait_delete(&self, key: &[u8], rev: i64) -> Result<(), ServerError> {
        let spec = WatchSpec { key: key.to_vec(), start_revision: rev, ..Default::default() };
        let mut sub = self.watch.subscribe(spec);
        loop {
            match sub.next().await {
                Some(Delivery::Events(evs)) if evs.iter().any(|e| e.r#type == EventType::Delete as i32) => {
                    return Ok(());
                }
                Some(Delivery::Events(_)) => {}
                // History is gone: the caller reads the current state again.
                Some(Delivery::Compacted(_)) => return Ok(()),
                None => return Err(ServerError::Stopped),
            }
        }
    }

    /// Waits until no key under `pfx` has a create revision <= `max_create`.
    async fn wait_deletes(
        &self,
        pfx: &[u8],
        max_create: i64,
        auth: &Credentials,
    ) -> Result<ResponseHeader, ServerError> {
        loop {
            let r = self.edge(pfx, SortOrder::Descend, max_create, auth).await?;
            let header = r.header.unwrap_or_default();
            let Some(kv) = r.kvs.into_iter().next() else { return Ok(header) };
            self.wait_delete(&kv.key, header.revision).await?;
        }
    }

    /// Enters the queue under `name`: creates this lease's key (or finds it,
    /// updating its value), then waits for its turn. Returns the key, its
    /// create revision, and the header of the last read.
    async fn contend(
        self: &Arc<Self>,
        name: &[u8],
        lease: i64,
        value: &[u8],
        auth: &Credentials,
    ) -> Result<(Vec<u8>, i64, ResponseHeader), ServerError> {
        let pfx = prefix(name);
        let key = [pfx.as_slice(), format!("{lease:x}").as_bytes()].concat();
        let put = PutRequest { key: key.clone(), value: value.to_vec(), lease, ..Default::default() };
        let get = RangeRequest { key: key.clone(), ..Default::default() };
        let t = TxnRequest {
            compare: vec![create_rev_is(&key, 0)],
            success: vec![op(Op::RequestPut(put))],
            failure: vec![op(Op::RequestRange(get))],
        };
        let resp = self.txn(t, auth).await?;
        let mut header = resp.header.unwrap_or_default();
        let rev = if resp.succeeded {
            header.revision
        } else {
            let existing = match resp.responses.into_iter().next().and_then(|r| r.response) {
                Some(OpResponse::ResponseRange(r)) => r.kvs.into_iter().next(),
                _ => None,
            };
            let kv = existing.ok_or(ServerError::SessionExpired)?;
            if kv.value != value {
                self.proclaim_at(&key, kv.create_revision, lease, value, auth).await?;
            }
            kv.create_revision
        };
        let mut guard = DeleteOnDrop { server: self.clone(), key: Some(key.clone()), auth: auth.clone() };
        let first = self.edge(&pfx, SortOrder::Ascend, 0, auth).await?;
        if first.kvs.first().map(|kv| kv.create_revision) != Some(rev) {
            header = self.wait_deletes(&pfx, rev - 1, auth).await?;
            // The lease may have expired while waiting.
            let mine = self.range(RangeRequest { key: key.clone(), ..Default::default() }, auth).await?;
            if mine.kvs.is_empty() {
                guard.key = None;
                return Err(ServerError::SessionExpired);
            }
        } else if let Some(h) = first.header {
            header = h;
        }
        guard.key = None;
        Ok((key, rev, header))
    }

    /// Lock.Lock: waits until `name` is held under `lease` (a new lease of
    /// 60 s when 0); returns the key that holds it.
    pub async fn lock(
        self: &Arc<Self>,
        name: &[u8],
        lease: i64,
        auth: &Credentials,
    ) -> Result<(Vec<u8>, ResponseHeader), ServerError> {
        let lease = match lease {
            0 => self.lease_grant(LeaseGrantRequest { ttl: SESSION_TTL, id: 0 }, auth).await?.id,
            l => l,
        };
        let (key, _, header) = self.contend(name, lease, b"", auth).await?;
        Ok((key, self.header(header.revision)))
    }

    /// Lock.Unlock: deletes the key.
    pub async fn unlock(&self, key: Vec<u8>, auth: &Credentials) -> Result<ResponseHeader, ServerError> {
        let r = self.delete_range(DeleteRangeRequest { key, ..Default::default() }, auth).await?;
        Ok(r.header.unwrap_or_default())
    }

    /// Election.Campaign: waits until this lease leads `name` with `value`.
    pub async fn campaign(
        self: &Arc<Self>,
        name: &[u8],
        lease: i64,
        value: &[u8],
        auth: &Credentials,
    ) -> Result<(LeaderKey, ResponseHeader), ServerError> {
        let (key, rev, header) = self.contend(name, lease, value, auth).await?;
        Ok((LeaderKey { name: name.to_vec(), key, rev, lease }, self.header(header.revision)))
    }

    async fn proclaim_at(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: &[u8],
        auth: &Credentials,
    ) -> Result<ResponseHeader, ServerError> {
        let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
        let t = TxnRequest {
            compare: vec![create_rev_is(key, rev)],
            success: vec![op(Op::RequestPut(put))],
            failure: vec![],
        };
        let resp = self.txn(t, auth).await?;
        if !resp.succeeded {
            return Err(ServerError::ElectionNotLeader);
        }
        Ok(resp.header.unwrap_or_default())
    }

    /// Election.Proclaim: a new value from the current leader.
    pub async fn proclaim(
        &self,
        leader: &LeaderKey,
        value: &[u8],
        auth: &Credentials,
    ) -> Result<ResponseHeader, ServerError> {
        self.proclaim_at(&leader.key, leader.rev, leader.lease, value, auth).await
    }

    /// Election.Resign: the leader steps down (nothing if it no longer leads).
    pub async fn resign(&self, leader: &LeaderKey, auth: &Credentials) -> Result<ResponseHeader, ServerError> {
        let del = DeleteRangeRequest { key: leader.key.clone(), ..Default::default() };
        let t = TxnRequest {
            compare: vec![create_rev_is(&leader.key, leader.rev)],
            success: vec![op(Op::RequestDeleteRange(del))],
            failure: vec![],
        };
        Ok(self.txn(t, auth).await?.header.unwrap_or_default())
    }

    /// Election.Leader: the current leader's key and value.
    pub async fn election_leader(&self, name: &[u8], auth: &Credentials) -> Result<LeaderResponse, ServerError> {
        let r = self.edge(&prefix(name), SortOrder::Ascend, 0, auth).await?;
        let kv = r.kvs.into_iter().next().ok_or(ServerError::ElectionNoLeader)?;
        Ok(LeaderResponse { header: r.header, kv: Some(kv) })
    }

    /// Election.Observe: every leader of `name` and each value it proclaims,
    /// until the receiver is dropped.
    pub fn observe(
        self: &Arc<Self>,
        name: Vec<u8>,
        auth: Credentials,
    ) -> mpsc::Receiver<Result<LeaderResponse, ServerError>> {
        let (tx, rx) = mpsc::channel(16);
        let s = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = s.observe_loop(&name, &auth, &tx) => {}
            }
        });
        rx
    }

    async fn observe_loop(
        &self,
        name: &[u8],
        auth: &Credentials,
        tx: &mpsc::Sender<Result<LeaderResponse, ServerError>>,
    ) -> Option<()> {
        let pfx = prefix(name);
        loop {
            let r = match self.edge(&pfx, SortOrder::Ascend, 0, auth).await {
                Ok(r) => r,
                Err(e) => return tx.send(Err(e)).await.ok(),
            };
            let mut header = r.header.unwrap_or_default();
            let leader: KeyValue = match r.kvs.into_iter().next() {
                Some(kv) => kv,
                None => {
                    // No leader yet: wait for the first put under the prefix.
                    let spec = WatchSpec {
                        key: pfx.clone(),
                        range_end: prefix_end(&pfx),
                        start_revision: header.revision + 1,
                        no_delete: true,
                        ..Default::default()
                    };
                    let mut sub = self.watch.subscribe(spec);
                    loop {
                        match sub.next().await? {
                            Delivery::Events(evs) => {
                                if let Some(kv) = evs.into_iter().find_map(|e: Event| e.kv) {
                                    header.revision = kv.mod_revision;
                                    break kv;
                                }
                            }
                            Delivery::Compacted(_) => break KeyValue::default(),
                        }
                    }
                }
            };
            if leader.key.is_empty() {
                continue;
            }
            let header = self.header(header.revision);
            tx.send(Ok(LeaderResponse { header: Some(header), kv: Some(leader.clone()) })).await.ok()?;
            // Follow the leader's key: new values, until it is deleted.
            let spec =
                WatchSpec { key: leader.key.clone(), start_revision: leader.mod_revision + 1, ..Default::default() };
            let mut sub = self.watch.subscribe(spec);
            'follow: loop {
                match sub.next().await? {
                    Delivery::Events(evs) => {
                        for e in evs {
                            if e.r#type == EventType::Delete as i32 {
                                break 'follow;
                            }
                            let Some(kv) = e.kv else { continue };
                            let h = self.header(kv.mod_revision);
                            tx.send(Ok(LeaderResponse { header: Some(h), kv: Some(kv) })).await.ok()?;
                        }
                    }
                    Delivery::Compacted(_) => break 'follow,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends_as_clientv3() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
