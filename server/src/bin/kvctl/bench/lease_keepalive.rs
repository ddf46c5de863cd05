//! `kvctl bench lease-keepalive`, after etcd's benchmark of the same name:
//! every client grants one lease, then renews it over its own keep-alive
//! stream, one renewal in flight; the latency is from sending a renewal to
//! receiving its answer.

use kvd_api::etcdserverpb::lease_client::LeaseClient;
use kvd_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{Caller, Common, Conn, Report, connections, drive};

/// The TTL of the benchmark's leases: long enough never to expire mid-run.
const TTL_SECONDS: i64 = 300;

struct KeepAliver {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: Streaming<LeaseKeepAliveResponse>,
}

impl Caller for KeepAliver {
    async fn call(&mut self, _: &mut u64, _: u64) -> Result<(), Status> {
        self.tx
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
        match self.rx.message().await? {
            Some(r) if r.ttl > 0 => Ok(()),
            Some(_) => Err(Status::not_found("etcdserver: requested lease not found")),
            None => Err(Status::unavailable("keep-alive stream ended")),
        }
    }
}

async fn keep_aliver(ch: Conn) -> Result<(KeepAliver, LeaseClient<Conn>), String> {
    let mut lease = LeaseClient::new(ch);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: TTL_SECONDS, id: 0 })
        .await
        .map_err(|s| format!("lease grant: {}", s.message()))?
        .into_inner()
        .id;
    // etcd (grpc-go) sends a stream's response headers with its first
    // message, so one renewal goes out before the call can return.
    let (tx, rx) = mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id }).await.map_err(|_| "lease keep-alive: channel closed".to_string())?;
    let mut rx = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("lease keep-alive: {}", s.message()))?
        .into_inner();
    rx.message().await.map_err(|s| format!("lease keep-alive: {}", s.message()))?;
    Ok((KeepAliver { id, tx, rx }, lease))
}

pub(super) async fn lease_keepalive(c: &Common) -> Result<Report, String> {
    let chans = connections(c).await?;
    let mut callers = Vec::new();
    let mut owners = Vec::new();
    for ch in chans.into_iter().cycle().take(c.clients.max(1)) {
        let (k, lease) = keep_aliver(ch).await?;
        owners.push((k.id, lease));
        callers.push(k);
    }
    let report = drive(c, callers).await?;
    // Leave nothing behind on the server.
    for (id, mut lease) in owners {
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(report)
}
