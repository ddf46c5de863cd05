//! The Cluster service: MemberList here; membership changes run on the
//! leader (a follower passes them on over the peer protocol).

use std::sync::Arc;

use kvd_api::etcdserverpb::cluster_server::Cluster;
use kvd_api::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use kvd_api::kvdpeerpb::cluster_op_request::Op;
use prost::Message;
use tonic::{Request, Response, Status};

use super::auth_info;
use crate::etcdserver::EtcdServer;

pub struct ClusterService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        let member = self.server.cluster_op(Op::MemberAdd(req.into_inner().encode_to_vec())).await?;
        let id = member.as_ref().map(|m| m.id);
        let members = self.server.member_list_showing(|l| l.iter().any(|m| Some(m.id) == id)).await;
        Ok(Response::new(MemberAddResponse { header: Some(self.server.header(0)), member, members }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        let id = req.into_inner().id;
        self.server.cluster_op(Op::MemberRemove(id)).await?;
        let members = self.server.member_list_showing(|l| l.iter().all(|m| m.id != id)).await;
        Ok(Response::new(MemberRemoveResponse { header: Some(self.server.header(0)), members }))
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        let r = req.into_inner();
        self.server.cluster_op(Op::MemberUpdate(r.encode_to_vec())).await?;
        let members =
            self.server.member_list_showing(|l| l.iter().any(|m| m.id == r.id && m.peer_ur_ls == r.peer_ur_ls)).await;
        Ok(Response::new(MemberUpdateResponse { header: Some(self.server.header(0)), members }))
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.server.linearizable_read_notify().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.server.header(0)),
            members: self.server.member_list(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        let id = req.into_inner().id;
        self.server.cluster_op(Op::MemberPromote(id)).await?;
        let members = self.server.member_list_showing(|l| l.iter().any(|m| m.id == id && !m.is_learner)).await;
        Ok(Response::new(MemberPromoteResponse { header: Some(self.server.header(0)), members }))
    }
}
