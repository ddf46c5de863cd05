//! The Lease service: grant and revoke through raft, keep-alive as a
//! bidirectional stream (answered by the leader), TimeToLive and Leases.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kvd_api::etcdserverpb::lease_server::Lease;
use kvd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info_span};

use super::auth_info;
use crate::etcdserver::EtcdServer;

pub struct LeaseService {
    pub server: Arc<EtcdServer>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let auth = auth_info(&req);
        let span = info_span!("api", method = "LeaseGrant");
        Ok(Response::new(self.server.lease_grant(req.into_inner(), &auth).instrument(span).await?))
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let auth = auth_info(&req);
        let span = info_span!("api", method = "LeaseRevoke");
        Ok(Response::new(self.server.lease_revoke(req.into_inner(), &auth).instrument(span).await?))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let server = self.server.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                // Ends with the client's request side, or when the response side is gone.
                let r = tokio::select! {
                    r = inbound.message() => r,
                    _ = tx.closed() => break,
                };
                let Ok(Some(r)) = r else { break };
                let resp = match server.lease_renew(r.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse { header: Some(server.header(0)), id: r.id, ttl }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let creds = auth_info(&req);
        let span = info_span!("api", method = "LeaseTimeToLive");
        Ok(Response::new(self.server.lease_time_to_live(req.into_inner(), &creds).instrument(span).await?))
    }

    async fn lease_leases(&self, _req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.server.lease_leases()))
    }
}
