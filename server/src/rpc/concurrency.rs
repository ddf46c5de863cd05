//! The Lock and Election services (`v3lockpb.Lock`, `v3electionpb.Election`),
//! served by the server layer's lock and election on KV, Lease and Watch.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kvd_api::v3electionpb::election_server::Election;
use kvd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest,
    ResignResponse,
};
use kvd_api::v3lockpb::lock_server::Lock;
use kvd_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::auth_info;
use crate::etcdserver::{EtcdServer, ServerError};

pub struct LockService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        let (key, header) = self.server.lock(&r.name, r.lease, &auth).await?;
        Ok(Response::new(LockResponse { header: Some(header), key }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let auth = auth_info(&req);
        let header = self.server.unlock(req.into_inner().key, &auth).await?;
        Ok(Response::new(UnlockResponse { header: Some(header) }))
    }
}

pub struct ElectionService {
    pub server: Arc<EtcdServer>,
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        let (leader, header) = self.server.campaign(&r.name, r.lease, &r.value, &auth).await?;
        Ok(Response::new(CampaignResponse { header: Some(header), leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        let leader = r.leader.ok_or(ServerError::MissingLeaderKey)?;
        // The txn behind it already filled the header.
        let header = self.server.proclaim(&leader, &r.value, &auth).await?;
        Ok(Response::new(ProclaimResponse { header: Some(header) }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let auth = auth_info(&req);
        Ok(Response::new(self.server.election_leader(&req.into_inner().name, &auth).await?))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let auth = auth_info(&req);
        let rx = self.server.observe(req.into_inner().name, auth);
        let out =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r.map_err(Status::from), rx)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let auth = auth_info(&req);
        let leader = req.into_inner().leader.ok_or(ServerError::MissingLeaderKey)?;
        let header = self.server.resign(&leader, &auth).await?;
        Ok(Response::new(ResignResponse { header: Some(header) }))
    }
}
