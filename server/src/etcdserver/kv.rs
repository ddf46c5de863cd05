//! The KV path: quota, preflight, proposal and wait; reads after ReadIndex.

use kvd_api::etcdserverpb::alarm_request::AlarmAction;
use kvd_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, InternalRaftRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use tracing::{Instrument, info_span};

use super::{EtcdServer, MAX_GAP_BETWEEN_APPLY_AND_COMMIT, ServerError};
use crate::apply::view::{ReadView, View};
use crate::apply::{ApplyOutput, range, txn};
use crate::auth::AuthInfo;
use crate::metrics;
use crate::quota;
use kvd_api::authpb::permission::Type as PermType;
use kvd_api::etcdserverpb::RequestHeader;

/// What a request presents: the `token` metadata, or nothing. `internal`
/// marks the server's own requests (health probes), which auth does not check.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: Option<String>,
    /// The verified client certificate's common name (TLS listeners).
    pub common_name: Option<String>,
    pub internal: bool,
}

impl Credentials {
    pub fn internal() -> Self {
        Self { token: None, common_name: None, internal: true }
    }
}

/// The raft header naming who proposed a request (None: the server itself).
pub(super) fn request_header(user: &Option<AuthInfo>) -> Option<RequestHeader> {
    user.as_ref().map(|u| RequestHeader { id: 0, username: u.username.clone(), auth_revision: u.revision })
}

impl EtcdServer {
    /// Quota: would this request take the backend over its quota? If so, raise
    /// the NOSPACE alarm through raft and refuse.
    pub async fn check_quota(&self, cost: u64) -> Result<(), ServerError> {
        let _span = info_span!("quota", cost).entered();
        if self.quota.available(self.store.backend().size_with_buffered(), cost) {
            return Ok(());
        }
        drop(_span);
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.propose(InternalRaftRequest { alarm: Some(req), ..Default::default() }).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        }
        Err(ServerError::NoSpace)
    }

    /// Resolves a request's token to its user, at the current auth revision.
    /// None: the server's own request, not checked. With auth disabled the
    /// user is anonymous at the current revision, so a request that is applied
    /// after auth was enabled is refused as checked against an old revision.
    pub fn check_auth(&self, creds: &Credentials) -> Result<Option<AuthInfo>, ServerError> {
        if creds.internal {
            return Ok(None);
        }
        // Without a token, a verified client certificate names the user (etcd's
        // --client-cert-auth).
        if creds.token.is_none()
            && self.cfg.client_cert_auth
            && let Some(cn) = &creds.common_name
            && self.auth.enabled()
        {
            return Ok(Some(AuthInfo { username: cn.clone(), revision: self.auth.revision() }));
        }
        match self.auth.resolve(creds.token.as_deref())? {
            Some(info) => Ok(Some(info)),
            None => Ok(Some(AuthInfo { username: String::new(), revision: self.auth.revision() })),
        }
    }

    /// Read permission on `[key, range_end)` for a request served locally.
    pub(super) fn check_read(&self, user: &Option<AuthInfo>, key: &[u8], range_end: &[u8]) -> Result<(), ServerError> {
        match user {
            Some(u) => Ok(self.auth.check_range(u, key, range_end, PermType::Read)?),
            None => Ok(()),
        }
    }

    /// Root only, for a request served locally.
    pub(super) fn check_admin(&self, user: &Option<AuthInfo>) -> Result<(), ServerError> {
        match user {
            Some(u) => Ok(self.auth.check_admin(u)?),
            None => Ok(()),
        }
    }

    /// KVServer preflight: apply lag, then auth. Returns the request's user.
    pub(super) fn preflight(&self, auth: &Credentials) -> Result<Option<AuthInfo>, ServerError> {
        let _span = info_span!("preflight").entered();
        // Read the two indexes in place: cloning the metrics costs allocations per write.
        let (committed, applied) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            (m.local_committed.map(|l| l.index()).unwrap_or(0), m.last_applied.map(|l| l.index()).unwrap_or(0))
        };
        if committed.saturating_sub(applied) > MAX_GAP_BETWEEN_APPLY_AND_COMMIT {
            return Err(ServerError::TooManyRequests);
        }
        self.check_auth(auth)
    }

    /// Proposes `req` and waits until it is applied, or times out (after
    /// the request timeout).
    pub async fn propose(&self, req: InternalRaftRequest) -> Result<ApplyOutput, ServerError> {
        self.propose_within(req, self.request_timeout()).await
    }

    /// [`propose`](Self::propose), timing out after `timeout`.
    pub async fn propose_within(
        &self,
        mut req: InternalRaftRequest,
        timeout: std::time::Duration,
    ) -> Result<ApplyOutput, ServerError> {
        let id = self.ids.next();
        req.id = id;
        if let Some(h) = &mut req.header {
            h.id = id;
        }
        let data = bytes::Bytes::from(req.encode_to_vec());
        if data.len() > self.cfg.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        let rx = self.wait.register(id);
        let m = metrics::get();
        m.proposals_pending.inc();
        let res = async {
            let deadline = tokio::time::Instant::now() + timeout;
            // On the leader, propose; on a follower, hand the request to the
            // leader. Either way the answer is this member's own apply of it.
            let refused = if crate::failpoints::fails("propose_lost") {
                // As a proposal a leader took and lost with its term: no apply comes.
                None
            } else {
                self.submit(data, deadline).await?
            };
            // If raft refuses a local proposal (leadership moved), answer at once
            // instead of waiting for an apply that will never come.
            let refused = async {
                match refused {
                    Some(done) => match done.await {
                        Ok(Err(_)) => ServerError::LeaderChanged,
                        _ => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::time::timeout_at(deadline, rx) => match r {
                    Ok(Ok(r)) => r.map_err(ServerError::from),
                    Ok(Err(_)) => Err(ServerError::Stopped),
                    Err(_) => Err(ServerError::Timeout),
                },
                e = refused => Err(e),
            }
        }
        .instrument(info_span!("propose", request_id = id))
        .await;
        m.proposals_pending.dec();
        if res.is_err() {
            self.wait.cancel(id);
            if matches!(
                res,
                Err(ServerError::Timeout
                    | ServerError::Internal(_)
                    | ServerError::Stopped
                    | ServerError::LeaderChanged)
            ) {
                m.proposals_failed.inc();
            }
        }
        res
    }

    pub async fn range(&self, r: RangeRequest, auth: &Credentials) -> Result<RangeResponse, ServerError> {
        let user = self.check_auth(auth)?;
        self.check_read(&user, &r.key, &r.range_end)?;
        if !r.serializable {
            self.linearizable_read_notify().await?;
        }
        let view = ReadView::new(&self.store);
        let mut resp = range::execute_range(&view, &r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn put(&self, r: PutRequest, auth: &Credentials) -> Result<PutResponse, ServerError> {
        self.check_quota(quota::put_cost(&r)).await?;
        let user = self.preflight(auth)?;
        let req = InternalRaftRequest { header: request_header(&user), put: Some(r), ..Default::default() };
        match self.propose(req).await? {
            ApplyOutput::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(
        &self,
        r: DeleteRangeRequest,
        auth: &Credentials,
    ) -> Result<DeleteRangeResponse, ServerError> {
        let user = self.preflight(auth)?;
        let req = InternalRaftRequest { header: request_header(&user), delete_range: Some(r), ..Default::default() };
        match self.propose(req).await? {
            ApplyOutput::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, r: TxnRequest, auth: &Credentials) -> Result<TxnResponse, ServerError> {
        if txn::is_read_only(&r) {
            // Read-only txns are served locally, after ReadIndex unless serializable.
            if let Some(u) = self.check_auth(auth)? {
                crate::apply::auth::check_txn(&self.auth, &self.lessor, &u, &r)?;
            }
            if !txn::is_serializable(&r) {
                self.linearizable_read_notify().await?;
            }
            let view = ReadView::new(&self.store);
            let mut ro = ReadOnly(view);
            let mut resp = txn::txn(&mut ro, &self.lessor, &r)?;
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.check_quota(quota::txn_cost(&r)).await?;
        let user = self.preflight(auth)?;
        let req = InternalRaftRequest { header: request_header(&user), txn: Some(r), ..Default::default() };
        match self.propose(req).await? {
            ApplyOutput::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn compact(&self, r: CompactionRequest, auth: &Credentials) -> Result<CompactionResponse, ServerError> {
        let user = self.preflight(auth)?;
        let physical = r.physical;
        let req = InternalRaftRequest { header: request_header(&user), compaction: Some(r), ..Default::default() };
        match self.propose(req).await? {
            ApplyOutput::Compaction(mut resp, done) => {
                if physical {
                    // Physical: answer once the space is freed.
                    let _ = done.await;
                }
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn alarm(&self, r: AlarmRequest) -> Result<AlarmResponse, ServerError> {
        match self.propose(InternalRaftRequest { alarm: Some(r), ..Default::default() }).await? {
            ApplyOutput::Alarm(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }
}

pub(super) fn unexpected(o: ApplyOutput) -> ServerError {
    ServerError::Internal(format!("unexpected apply result {o:?}"))
}

/// A read view for read-only txns: the write half is never reached because
/// the txn has no write ops.
struct ReadOnly<'a>(ReadView<'a>);

impl crate::apply::view::View for ReadOnly<'_> {
    fn range(
        &self,
        key: &[u8],
        end: crate::mvcc::RangeEnd<'_>,
        opts: crate::mvcc::RangeOptions,
    ) -> Result<crate::mvcc::RangeResult, crate::mvcc::MvccError> {
        self.0.range(key, end, opts)
    }
    fn rev(&self) -> i64 {
        self.0.rev()
    }
    fn compact_rev(&self) -> i64 {
        self.0.compact_rev()
    }
}

impl crate::apply::view::WriteView for ReadOnly<'_> {
    fn put(&mut self, _key: &[u8], _value: &[u8], _lease: i64) -> i64 {
        debug_assert!(false, "read-only txn wrote");
        self.0.rev()
    }
    fn delete_range(&mut self, _key: &[u8], _end: crate::mvcc::RangeEnd<'_>) -> Vec<Vec<u8>> {
        debug_assert!(false, "read-only txn deleted");
        Vec::new()
    }
    fn has_changes(&self) -> bool {
        false
    }
}
