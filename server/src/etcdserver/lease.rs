//! Leases in the server layer: grant and revoke go through raft like any
//! write; keep-alive and TimeToLive are answered by the leader, the only
//! member with lease clocks (followers pass them on over the peer service);
//! and the leader proposes `LeaseRevoke` for leases that expire.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kvd_api::etcdserverpb::{
    InternalRaftRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use kvd_api::kvdpeerpb::peer_client::PeerClient;
use kvd_api::kvdpeerpb::{LeaseRenewRequest, LeaseTimeToLiveRequest as PeerTtlRequest};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::kv::{Credentials, request_header, unexpected};
use super::{EtcdServer, ServerError};
use crate::apply::{ApplyError, ApplyOutput};
use crate::lease::{LeaseError, MAX_LEASE_TTL};
use crate::quota::LEASE_GRANT_COST;

/// Expired leases revoked per round of the expiry loop (etcd revokes at most
/// 1000 per second).
const REVOKES_PER_ROUND: usize = 500;
/// A revoke that has not taken effect by then is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

impl EtcdServer {
    pub async fn lease_grant(
        &self,
        mut r: LeaseGrantRequest,
        auth: &Credentials,
    ) -> Result<LeaseGrantResponse, ServerError> {
        if r.ttl > MAX_LEASE_TTL {
            return Err(ApplyError::LeaseTtlTooLarge.into());
        }
        self.check_quota(LEASE_GRANT_COST).await?;
        let user = self.preflight(auth)?;
        while r.id == 0 {
            // Only positive ids, as etcd.
            r.id = (self.ids.next() & (i64::MAX as u64)) as i64;
        }
        let req = InternalRaftRequest { header: request_header(&user), lease_grant: Some(r), ..Default::default() };
        match self.propose(req).await? {
            ApplyOutput::LeaseGrant(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_revoke(
        &self,
        r: LeaseRevokeRequest,
        auth: &Credentials,
    ) -> Result<LeaseRevokeResponse, ServerError> {
        let user = self.preflight(auth)?;
        let req = InternalRaftRequest { header: request_header(&user), lease_revoke: Some(r), ..Default::default() };
        match self.propose(req).await? {
            ApplyOutput::LeaseRevoke(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Keep-alive: the lease's TTL, or 0 when it does not exist (etcd answers
    /// an unknown lease with TTL 0, not an error).
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ServerError> {
        let req = LeaseRenewRequest { cluster_id: self.cluster_id, id };
        self.at_leader(
            || self.local_lease_renew(id),
            |mut c| async move { c.lease_renew(req).await.map(|r| r.into_inner().ttl) },
        )
        .await
    }

    /// A lease call answered where the lease clocks are: by this member if
    /// it leads (`local`), else by the leader over the peer service
    /// (`remote`). Until the request timeout, a call is tried again at the
    /// leader of the moment if leadership moved under it or the forwarded
    /// call failed in any way, as etcd's LeaseRenew and LeaseTimeToLive
    /// forward: a leader killed with the call in flight shows as Unknown,
    /// Unavailable, Internal or Cancelled, depending on when its connection
    /// closed, and the calls are idempotent.
    async fn at_leader<T, L, R>(
        &self,
        local: impl Fn() -> L,
        remote: impl Fn(PeerClient<Channel>) -> R,
    ) -> Result<T, ServerError>
    where
        L: Future<Output = Result<T, ServerError>>,
        R: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.request_timeout();
        loop {
            let (leader, node) = self.wait_for_leader(deadline).await?;
            if leader == self.member_id {
                match local().await {
                    Err(ServerError::NotLeader) => {}
                    r => return r,
                }
            } else {
                match tokio::time::timeout_at(deadline, remote(self.peer_client(&node)?)).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(s)) => {
                        tracing::debug!(leader = %format!("{leader:x}"), error = %s, "forwarded lease call failed; trying again")
                    }
                    Err(_) => return Err(ServerError::Timeout),
                }
            }
            if Instant::now() >= deadline {
                return Err(ServerError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Keep-alive on the leader (also the peer RPC's handler). The leader first
    /// confirms its leadership and applies everything committed, so a lease
    /// granted through another member is known here.
    pub async fn local_lease_renew(&self, id: i64) -> Result<i64, ServerError> {
        self.linearizable_read_notify().await?;
        match self.lessor.renew(id) {
            Ok(ttl) => Ok(ttl),
            Err(LeaseError::NotFound) => Ok(0),
            Err(_) => Err(ServerError::NotLeader),
        }
    }

    pub async fn lease_time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
        creds: &Credentials,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        let user = self.check_auth(creds)?;
        let req = PeerTtlRequest { cluster_id: self.cluster_id, id: r.id, keys: r.keys };
        let found = self
            .at_leader(
                || self.local_lease_status(r.id, r.keys),
                |mut c| async move {
                    let p = c.lease_time_to_live(req).await?.into_inner();
                    Ok(p.found.then_some(crate::lease::LeaseStatus {
                        remaining: p.remaining,
                        granted: p.granted,
                        keys: p.keys,
                    }))
                },
            )
            .await?;
        // Listing the keys needs read permission on each, as etcd.
        for k in found.iter().flat_map(|st| st.keys.iter()) {
            self.check_read(&user, k, &[])?;
        }
        let header = Some(self.header(0));
        // An unknown lease is answered with TTL -1, as etcd.
        Ok(match found {
            Some(st) => {
                LeaseTimeToLiveResponse { header, id: r.id, ttl: st.remaining, granted_ttl: st.granted, keys: st.keys }
            }
            None => LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, granted_ttl: 0, keys: Vec::new() },
        })
    }

    /// TimeToLive on the leader (also the peer RPC's handler): None when the
    /// lease does not exist.
    pub async fn local_lease_status(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<Option<crate::lease::LeaseStatus>, ServerError> {
        self.linearizable_read_notify().await?;
        match self.lessor.status(id, keys) {
            Ok(st) => Ok(Some(st)),
            Err(LeaseError::NotFound) => Ok(None),
            Err(_) => Err(ServerError::NotLeader),
        }
    }

    /// Every lease this member knows (served locally, as etcd).
    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        let leases = self.lessor.leases().into_iter().map(|id| LeaseStatus { id }).collect();
        LeaseLeasesResponse { header: Some(self.header(0)), leases }
    }

    /// Leader changes move the lease clocks: the new leader of `term`
    /// restarts them (at full TTL plus an election timeout) once it has
    /// applied its term's first entry, the others stop them.
    pub(super) fn on_leader_change(&self, leader: Option<u64>, term: u64) {
        if leader == Some(self.member_id) {
            self.lessor.lead(term, Duration::from_millis(self.cfg.election_timeout_ms));
        } else {
            self.lessor.demote();
        }
    }

    /// The leader's expiry loop: proposes `LeaseRevoke` for expired leases.
    pub fn run_lease_expiry(self: &Arc<Self>) {
        let s = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                for id in s.lessor.take_expired(REVOKES_PER_ROUND, REVOKE_RETRY) {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let req =
                            InternalRaftRequest { lease_revoke: Some(LeaseRevokeRequest { id }), ..Default::default() };
                        match s.propose(req).await {
                            Ok(_) | Err(ServerError::Apply(ApplyError::LeaseNotFound)) => {
                                tracing::debug!(lease = %format!("{id:x}"), "revoked expired lease")
                            }
                            Err(e) => {
                                tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking an expired lease failed; will retry")
                            }
                        }
                    });
                }
            }
        });
    }
}
