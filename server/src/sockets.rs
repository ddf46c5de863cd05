//! Options for every TCP connection kvd accepts (client, peer and metrics
//! ports, with or without TLS).
//!
//! - No Nagle: small gRPC replies must not wait for a delayed ACK.
//! - TCP keepalive, as Go sets on etcd's accepted connections: probes after
//!   [`KEEPALIVE_IDLE`] of silence, every [`KEEPALIVE_INTERVAL`], and the
//!   connection is dropped after [`KEEPALIVE_RETRIES`] unanswered. A client
//!   that vanishes without closing (its pod deleted, its host powered off)
//!   would otherwise keep its connection, its watchers and their memory
//!   here for good.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
pub const KEEPALIVE_RETRIES: u32 = 9;

/// The next connection on `l`, tuned. An error (out of file descriptors,
/// say) is logged and retried after a short pause rather than ending the
/// listener.
pub async fn accept(l: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match l.accept().await {
            Ok((sock, addr)) => {
                tune_accepted(&sock);
                return (sock, addr);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Applies the options above to an accepted connection. Failing to set one
/// is logged, not fatal: the connection still works.
pub fn tune_accepted(sock: &TcpStream) {
    if let Err(e) = sock.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive on an accepted connection");
    }
}
