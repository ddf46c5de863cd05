//! The KV service: validate, then hand to the server logic.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kvd_api::etcdserverpb::kv_server::Kv;
use kvd_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use super::{auth_info, validate};
use crate::etcdserver::EtcdServer;

pub struct KvService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable && self.server.is_learner() {
            return Err(crate::etcdserver::ServerError::NotSupportedForLearner.into());
        }
        let span = info_span!("api", method = "Range");
        Ok(Response::new(self.server.range(r, &auth).instrument(span).await?))
    }

    type RangeStreamStream = Pin<Box<dyn Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

    async fn range_stream(&self, _req: Request<RangeRequest>) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented("RangeStream is not supported; use Range"))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        validate::check_put(&r)?;
        let span = info_span!("api", method = "Put");
        Ok(Response::new(self.server.put(r, &auth).instrument(span).await?))
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        validate::check_delete(&r)?;
        let span = info_span!("api", method = "DeleteRange");
        Ok(Response::new(self.server.delete_range(r, &auth).instrument(span).await?))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let auth = auth_info(&req);
        let r = req.into_inner();
        validate::check_txn(&r, self.server.cfg.max_txn_ops)?;
        let span = info_span!("api", method = "Txn");
        Ok(Response::new(self.server.txn(r, &auth).instrument(span).await?))
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let auth = auth_info(&req);
        let span = info_span!("api", method = "Compact");
        Ok(Response::new(self.server.compact(req.into_inner(), &auth).instrument(span).await?))
    }
}
