//! The Maintenance service: alarms, status, hashes, defragmentation, snapshots.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kvd_api::etcdserverpb::maintenance_server::Maintenance;
use kvd_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use super::auth_info;
use crate::etcdserver::EtcdServer;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

/// About this many bytes per Snapshot response (etcd's chunk).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(self.server.alarm(req.into_inner()).await?))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.server.status()))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        self.server.defragment().await?;
        Ok(Response::new(DefragmentResponse { header: Some(self.server.header(0)) }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        Ok(Response::new(self.server.hash().await?))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        Ok(Response::new(self.server.hash_kv(req.into_inner().revision).await?))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        let (pieces, estimate) = self.server.snapshot_stream(SNAPSHOT_CHUNK);
        let header = self.server.header(0);
        Ok(Response::new(Box::pin(snapshot_responses(pieces, estimate, header))))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        self.server.require_admin(&auth_info(&req))?;
        self.server.move_leader(req.into_inner().target_id).await?;
        Ok(Response::new(MoveLeaderResponse { header: Some(self.server.header(0)) }))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::failed_precondition("etcdserver: not capable"))
    }
}

/// The snapshot's pieces as etcd's responses: the header with the first,
/// `remaining_bytes` counting down from `estimate` (the size is known only
/// at the end: it stays above zero until the last piece, which says 0).
fn snapshot_responses(
    pieces: tokio::sync::mpsc::Receiver<Result<crate::snapshot::Piece, crate::snapshot::SnapshotError>>,
    estimate: u64,
    header: kvd_api::etcdserverpb::ResponseHeader,
) -> impl Stream<Item = Result<SnapshotResponse, Status>> + Send {
    futures::stream::unfold(Some((pieces, 0u64, Some(header))), move |st| async move {
        let (mut pieces, sent, header) = st?;
        match pieces.recv().await? {
            Err(e) => Some((Err(Status::internal(format!("snapshot: {e}"))), None)),
            Ok(p) => {
                let sent = sent + p.data.len() as u64;
                let remaining_bytes = if p.last { 0 } else { estimate.saturating_sub(sent).max(1) };
                let msg = SnapshotResponse { header, remaining_bytes, blob: p.data.to_vec(), version: "3.6.0".into() };
                let next = (!p.last).then_some((pieces, sent, None));
                Some((Ok(msg), next))
            }
        }
    })
}
