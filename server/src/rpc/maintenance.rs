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
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::auth_info;
use crate::etcdserver::EtcdServer;

pub struct MaintenanceService {
    pub server: Arc<EtcdServer>,
}

/// Snapshot chunk size, as etcd's 32 KiB.
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
        let (path, size) = self.server.snapshot_to_file().await?;
        let header = self.server.header(0);
        let stream = async_stream(path, size, header);
        Ok(Response::new(Box::pin(stream)))
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

/// Streams the snapshot file in chunks, then removes it.
fn async_stream(
    path: std::path::PathBuf,
    size: u64,
    header: kvd_api::etcdserverpb::ResponseHeader,
) -> impl Stream<Item = Result<SnapshotResponse, Status>> + Send {
    futures::stream::unfold(Some((None::<tokio::fs::File>, size, Some(header), path)), |st| async move {
        let (file, remaining, header, path) = st?;
        let mut file = match file {
            Some(f) => f,
            None => match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => return Some((Err(Status::internal(format!("snapshot: {e}"))), None)),
            },
        };
        if remaining == 0 && header.is_none() {
            let _ = tokio::fs::remove_file(&path).await;
            return None;
        }
        let mut buf = vec![0u8; SNAPSHOT_CHUNK.min(remaining as usize)];
        if let Err(e) = file.read_exact(&mut buf).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Some((Err(Status::internal(format!("snapshot: {e}"))), None));
        }
        let left = remaining - buf.len() as u64;
        let msg = SnapshotResponse { header, remaining_bytes: left, blob: buf, version: "3.6.0".into() };
        Some((Ok(msg), Some((Some(file), left, None, path))))
    })
}
