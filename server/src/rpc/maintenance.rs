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

/// Bytes per Snapshot response (etcd's chunk), the last one excepted.
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// About this many bytes per piece the snapshot's reader thread hands over,
/// each sent as responses of [`SNAPSHOT_CHUNK`]: a hand-over per response
/// cost a thread switch per 32 KiB, a sixth of an unloaded save's CPU.
const SNAPSHOT_PIECE: usize = 1 << 20;

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
        let (pieces, estimate) = self.server.snapshot_stream(SNAPSHOT_PIECE);
        let header = self.server.header(0);
        Ok(Response::new(Box::pin(snapshot_responses(pieces, estimate, header, SNAPSHOT_CHUNK))))
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

/// The snapshot's pieces as etcd's responses of `chunk` bytes (slices of
/// the pieces, not copies): the header with the first, `remaining_bytes`
/// counting down from `estimate` (the size is known only at the end: it
/// stays above zero until the last response, which says 0). Pieces that
/// stop before the last one (the reader thread died) end the stream with an
/// error, never as a complete snapshot.
fn snapshot_responses(
    pieces: tokio::sync::mpsc::Receiver<Result<crate::snapshot::Piece, crate::snapshot::SnapshotError>>,
    estimate: u64,
    header: kvd_api::etcdserverpb::ResponseHeader,
    chunk: usize,
) -> impl Stream<Item = Result<SnapshotResponse, Status>> + Send {
    struct Sending {
        pieces: tokio::sync::mpsc::Receiver<Result<crate::snapshot::Piece, crate::snapshot::SnapshotError>>,
        /// What is left of the current piece, and whether it is the last.
        piece: bytes::Bytes,
        last: bool,
        sent: u64,
        header: Option<kvd_api::etcdserverpb::ResponseHeader>,
    }
    let start = Sending { pieces, piece: bytes::Bytes::new(), last: false, sent: 0, header: Some(header) };
    futures::stream::unfold(Some(start), move |st| async move {
        let mut st = st?;
        while st.piece.is_empty() && !st.last {
            match st.pieces.recv().await {
                Some(Ok(p)) => (st.piece, st.last) = (p.data, p.last),
                Some(Err(e)) => return Some((Err(Status::internal(format!("snapshot: {e}"))), None)),
                None => return Some((Err(Status::internal("snapshot: the reader stopped before the end")), None)),
            }
        }
        let blob = st.piece.split_to(chunk.min(st.piece.len()));
        st.sent += blob.len() as u64;
        let done = st.last && st.piece.is_empty();
        let remaining_bytes = if done { 0 } else { estimate.saturating_sub(st.sent).max(1) };
        let msg = SnapshotResponse { header: st.header.take(), remaining_bytes, blob, version: "3.6.0".into() };
        Some((Ok(msg), (!done).then_some(st)))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::snapshot::Piece;

    fn piece(len: usize, byte: u8, last: bool) -> Result<Piece, crate::snapshot::SnapshotError> {
        Ok(Piece { data: bytes::Bytes::from(vec![byte; len]), last })
    }

    #[tokio::test]
    async fn pieces_are_sent_in_chunks_with_the_header_first_and_zero_remaining_last() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(piece(25, 1, false)).await.unwrap();
        tx.send(piece(10, 2, true)).await.unwrap();
        let header = kvd_api::etcdserverpb::ResponseHeader { revision: 7, ..Default::default() };
        let out: Vec<_> = snapshot_responses(rx, 100, header, 10).collect().await;
        let out: Vec<SnapshotResponse> = out.into_iter().map(Result::unwrap).collect();
        let sizes: Vec<usize> = out.iter().map(|m| m.blob.len()).collect();
        assert_eq!(sizes, vec![10, 10, 5, 10]);
        let remaining: Vec<u64> = out.iter().map(|m| m.remaining_bytes).collect();
        assert_eq!(remaining, vec![90, 80, 75, 0]);
        assert_eq!(out[0].header.as_ref().map(|h| h.revision), Some(7));
        assert!(out[1..].iter().all(|m| m.header.is_none()));
        let bytes: Vec<u8> = out.iter().flat_map(|m| m.blob.to_vec()).collect();
        assert_eq!(bytes, [vec![1; 25], vec![2; 10]].concat());
    }

    #[tokio::test]
    async fn a_reader_that_stops_before_the_last_piece_ends_the_stream_with_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(piece(15, 1, false)).await.unwrap();
        drop(tx);
        let out: Vec<_> = snapshot_responses(rx, 100, Default::default(), 10).collect().await;
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok() && out[1].is_ok());
        let err = out[2].as_ref().unwrap_err();
        assert!(err.message().contains("stopped before the end"), "{err:?}");
    }
}
