//! A small multi-endpoint maintenance client over the generated etcd v3
//! stubs, shared by `kvctl compact|defrag` and kvd-operator: lazily dialed
//! channels cached per endpoint, a timeout on every call (a longer one for
//! Defragment), cluster-wide calls tried on each endpoint in turn and
//! member-specific calls (Status, Defragment, MoveLeader) sent to that
//! member's own endpoint. It knows nothing of Kubernetes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::etcdserverpb::alarm_request::AlarmAction;
use crate::etcdserverpb::auth_client::AuthClient;
use crate::etcdserverpb::cluster_client::ClusterClient;
use crate::etcdserverpb::kv_client::KvClient;
use crate::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, AuthDisableRequest, AuthEnableRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, CompactionRequest, DefragmentRequest, Member, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, StatusRequest, StatusResponse,
};

/// etcd's answer to adding a user that exists (FailedPrecondition).
pub const ERR_USER_EXISTS: &str = "etcdserver: user name already exists";

/// etcd's answer to compacting at or below the compacted revision (OutOfRange).
pub const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's answer to compacting above the current revision (OutOfRange).
pub const ERR_FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The member answered with a gRPC error (etcd's message kept verbatim).
    #[error("{endpoint}: {message}")]
    Etcd { endpoint: String, code: tonic::Code, message: String },
    /// The member did not answer in time.
    #[error("{endpoint}: timed out")]
    Timeout { endpoint: String },
    /// The endpoint is not a URL tonic can dial.
    #[error("{endpoint}: bad endpoint: {message}")]
    BadEndpoint { endpoint: String, message: String },
    /// No endpoint was given.
    #[error("no endpoints")]
    NoEndpoints,
}

impl ClientError {
    /// The endpoint the error came from, if any.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            ClientError::Etcd { endpoint, .. }
            | ClientError::Timeout { endpoint }
            | ClientError::BadEndpoint { endpoint, .. } => Some(endpoint),
            ClientError::NoEndpoints => None,
        }
    }

    /// The message without the endpoint (etcd's string for `Etcd`).
    pub fn message(&self) -> String {
        match self {
            ClientError::Etcd { message, .. } => message.clone(),
            ClientError::Timeout { .. } => "timed out".into(),
            ClientError::BadEndpoint { message, .. } => message.clone(),
            ClientError::NoEndpoints => "no endpoints".into(),
        }
    }
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a Compact call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compacted {
    /// The keyspace is now compacted at the requested revision.
    Done,
    /// The revision was already compacted: nothing to do.
    Already,
}

/// The share of a member's backend file that defragmentation would return,
/// `(dbSize - dbSizeInUse) / dbSize` (0 for an empty or unknown size). kvctl's
/// `--skip-if-free-below` and the operator's NOSPACE remediation both use it.
pub fn free_fraction(db_size: i64, db_size_in_use: i64) -> f64 {
    if db_size <= 0 {
        return 0.0;
    }
    (db_size - db_size_in_use).max(0) as f64 / db_size as f64
}

/// `host:port` as `http://host:port`; URLs are kept as they are.
pub fn endpoint_url(e: &str) -> String {
    if e.contains("://") { e.to_string() } else { format!("http://{e}") }
}

/// TLS towards the members: the CA their certificates are signed by and,
/// for members that require client certificates, this client's own
/// certificate and key (all PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    /// (certificate chain, private key).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How often an idle connection is checked with an HTTP/2 PING.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Channels per endpoint, created lazily and reused; a channel whose call
/// timed out is dropped, and the next call dials again.
#[derive(Clone, Debug)]
pub struct Client {
    timeout: Duration,
    defrag_timeout: Duration,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Address overrides (endpoint -> reachable URL), e.g. for port-forwards.
    overrides: Arc<HashMap<String, String>>,
    tls: Option<Arc<ClientTls>>,
}

impl Client {
    /// Every call times out after `timeout`; Defragment after 20 times that.
    pub fn new(timeout: Duration) -> Self {
        Client { timeout, defrag_timeout: timeout * 20, channels: Arc::default(), overrides: Arc::default(), tls: None }
    }

    /// The timeout of every call but Defragment.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same client with another Defragment timeout.
    pub fn with_defrag_timeout(self, defrag_timeout: Duration) -> Self {
        Client { defrag_timeout, ..self }
    }

    /// The same client, dialing `to` whenever endpoint `from` is asked for.
    pub fn with_overrides(self, overrides: HashMap<String, String>) -> Self {
        Client { overrides: Arc::new(overrides), ..self }
    }

    /// The same client speaking TLS to every endpoint, with channels of its
    /// own: `https://` URLs, and `http://` URLs or bare `host:port` upgraded
    /// to `https://` (as etcdctl does with bare endpoints and a CA).
    pub fn with_tls(self, tls: ClientTls) -> Self {
        Client { tls: Some(Arc::new(tls)), channels: Arc::default(), ..self }
    }

    /// The (cached, lazily connected) channel to `endpoint`.
    pub fn channel(&self, endpoint: &str) -> Result<Channel> {
        let bad = |message: String| ClientError::BadEndpoint { endpoint: endpoint.to_string(), message };
        let mut channels = self.channels.lock().map_err(|_| bad("channel cache poisoned".into()))?;
        if let Some(c) = channels.get(endpoint) {
            return Ok(c.clone());
        }
        let mut target = self.overrides.get(endpoint).cloned().unwrap_or_else(|| endpoint_url(endpoint));
        if let (Some(_), Some(rest)) = (&self.tls, target.strip_prefix("http://")) {
            target = format!("https://{rest}");
        }
        let mut ep = Endpoint::from_shared(target)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.defrag_timeout.max(self.timeout))
            // A peer that vanished without a reset (a pod re-created at
            // another address, its old one dropped) is noticed by a PING
            // left unanswered, not only after TCP gives up in minutes.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(self.timeout)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                cfg = cfg.identity(Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg).map_err(|e| bad(format!("TLS: {e}")))?;
        }
        let c = ep.connect_lazy();
        channels.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    /// Awaits `f` for at most `timeout`, mapping gRPC errors to `ClientError`.
    pub async fn timed<T, F>(&self, endpoint: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                Err(ClientError::Etcd { endpoint: endpoint.to_string(), code: s.code(), message: s.message().into() })
            }
            Err(_) => {
                // The connection may be dead without knowing it: the next
                // call dials again (and resolves the name again).
                if let Ok(mut channels) = self.channels.lock() {
                    channels.remove(endpoint);
                }
                Err(ClientError::Timeout { endpoint: endpoint.to_string() })
            }
        }
    }

    /// Runs `f` against each endpoint until one succeeds; the last error otherwise.
    pub async fn any<T, F, Fut>(&self, endpoints: &[String], f: F) -> Result<T>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut last = ClientError::NoEndpoints;
        for ep in endpoints {
            match self.channel(ep) {
                Ok(c) => match f(c, ep.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Status of the member behind `endpoint`.
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        let mut c = MaintenanceClient::new(self.channel(endpoint)?);
        self.timed(endpoint, self.timeout, c.status(StatusRequest {})).await
    }

    /// MemberList (serializable) from the first endpoint that answers.
    pub async fn member_list(&self, endpoints: &[String]) -> Result<Vec<Member>> {
        self.any(endpoints, |c, ep| async move {
            let mut c = ClusterClient::new(c);
            let r = self.timed(&ep, self.timeout, c.member_list(MemberListRequest { linearizable: false })).await?;
            Ok(r.members)
        })
        .await
    }

    /// The raised alarms.
    pub async fn alarms(&self, endpoints: &[String]) -> Result<Vec<AlarmMember>> {
        self.any(endpoints, |c, ep| async move {
            let mut c = MaintenanceClient::new(c);
            let req = AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
            Ok(self.timed(&ep, self.timeout, c.alarm(req)).await?.alarms)
        })
        .await
    }

    /// MemberAdd as a learner; returns the new member's id.
    pub async fn add_learner(&self, endpoints: &[String], peer_url: &str) -> Result<u64> {
        self.any(endpoints, |c, ep| async move {
            let mut c = ClusterClient::new(c);
            let req = MemberAddRequest { peer_ur_ls: vec![peer_url.to_string()], is_learner: true };
            let r = self.timed(&ep, self.timeout, c.member_add(req)).await?;
            Ok(r.member.map(|m| m.id).unwrap_or(0))
        })
        .await
    }

    /// MemberPromote (fails with "learner ... not in sync" until caught up).
    pub async fn promote(&self, endpoints: &[String], id: u64) -> Result<()> {
        self.any(endpoints, |c, ep| async move {
            let mut c = ClusterClient::new(c);
            self.timed(&ep, self.timeout, c.member_promote(MemberPromoteRequest { id })).await.map(|_| ())
        })
        .await
    }

    /// MemberRemove.
    pub async fn remove(&self, endpoints: &[String], id: u64) -> Result<()> {
        self.any(endpoints, |c, ep| async move {
            let mut c = ClusterClient::new(c);
            self.timed(&ep, self.timeout, c.member_remove(MemberRemoveRequest { id })).await.map(|_| ())
        })
        .await
    }

    /// MoveLeader, sent to the current leader's endpoint.
    pub async fn move_leader(&self, leader_endpoint: &str, to: u64) -> Result<()> {
        let mut c = MaintenanceClient::new(self.channel(leader_endpoint)?);
        let req = MoveLeaderRequest { target_id: to };
        self.timed(leader_endpoint, self.timeout, c.move_leader(req)).await.map(|_| ())
    }

    /// Defragment the member behind `endpoint` (slow: the longer timeout).
    pub async fn defragment(&self, endpoint: &str) -> Result<()> {
        let mut c = MaintenanceClient::new(self.channel(endpoint)?);
        self.timed(endpoint, self.defrag_timeout, c.defragment(DefragmentRequest {})).await.map(|_| ())
    }

    /// Compact at `revision`; an already compacted revision is `Compacted::Already`.
    pub async fn compact(&self, endpoints: &[String], revision: i64, physical: bool) -> Result<Compacted> {
        let timeout = if physical { self.defrag_timeout } else { self.timeout };
        let r = self
            .any(endpoints, |c, ep| async move {
                let mut c = KvClient::new(c);
                let req = CompactionRequest { revision, physical };
                self.timed(&ep, timeout, c.compact(req)).await.map(|_| ())
            })
            .await;
        match r {
            Ok(()) => Ok(Compacted::Done),
            Err(ClientError::Etcd { message, .. }) if message.contains(ERR_COMPACTED) => Ok(Compacted::Already),
            Err(e) => Err(e),
        }
    }

    /// Whether authentication is on (AuthStatus).
    pub async fn auth_enabled(&self, endpoints: &[String]) -> Result<bool> {
        self.any(endpoints, |c, ep| async move {
            let mut c = AuthClient::new(c);
            Ok(self.timed(&ep, self.timeout, c.auth_status(AuthStatusRequest {})).await?.enabled)
        })
        .await
    }

    /// UserAdd of `name` with `password`, or with none (it can then only
    /// authenticate by a client certificate whose common name is `name`),
    /// then the role `role` granted; a user that exists is kept (and granted).
    pub async fn ensure_user(
        &self,
        endpoints: &[String],
        name: &str,
        password: Option<&str>,
        role: &str,
    ) -> Result<()> {
        self.any(endpoints, |c, ep| async move {
            let mut c = AuthClient::new(c);
            let req = AuthUserAddRequest {
                name: name.to_string(),
                password: password.unwrap_or_default().to_string(),
                options: Some(crate::authpb::UserAddOptions { no_password: password.is_none() }),
                hashed_password: String::new(),
            };
            match self.timed(&ep, self.timeout, c.user_add(req)).await {
                Ok(_) => {}
                Err(ClientError::Etcd { message, .. }) if message.contains(ERR_USER_EXISTS) => {}
                Err(e) => return Err(e),
            }
            let grant = AuthUserGrantRoleRequest { user: name.to_string(), role: role.to_string() };
            self.timed(&ep, self.timeout, c.user_grant_role(grant)).await.map(|_| ())
        })
        .await
    }

    /// AuthEnable (`on`) or AuthDisable.
    pub async fn set_auth(&self, endpoints: &[String], on: bool) -> Result<()> {
        self.any(endpoints, |c, ep| async move {
            let mut c = AuthClient::new(c);
            if on {
                self.timed(&ep, self.timeout, c.auth_enable(AuthEnableRequest {})).await.map(|_| ())
            } else {
                self.timed(&ep, self.timeout, c.auth_disable(AuthDisableRequest {})).await.map(|_| ())
            }
        })
        .await
    }

    /// AlarmRequest DEACTIVATE NOSPACE for `member_id`.
    pub async fn disarm_nospace(&self, endpoints: &[String], member_id: u64) -> Result<()> {
        self.any(endpoints, |c, ep| async move {
            let mut c = MaintenanceClient::new(c);
            let req =
                AlarmRequest { action: AlarmAction::Deactivate as i32, member_id, alarm: AlarmType::Nospace as i32 };
            self.timed(&ep, self.timeout, c.alarm(req)).await.map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url("https://a:1"), "https://a:1");
    }

    #[tokio::test]
    async fn dead_and_missing_endpoints_fail_cleanly() {
        let c = Client::new(Duration::from_millis(200));
        assert_eq!(c.member_list(&[]).await, Err(ClientError::NoEndpoints));
        let e = c.status("127.0.0.1:1").await.expect_err("nothing listens");
        assert_eq!(e.endpoint(), Some("127.0.0.1:1"));
        let bad = c.status("http://bad host:1").await.expect_err("bad url");
        assert!(matches!(bad, ClientError::BadEndpoint { .. }), "{bad:?}");
    }

    /// A peer that accepts and then never answers (as an address whose pod
    /// is gone may look): the call times out and its channel is dropped, so
    /// the next call dials again instead of waiting on the same connection.
    #[tokio::test]
    async fn a_timed_out_channel_is_dropped() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ep = silent.local_addr().expect("addr").to_string();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                conns.push(s);
            }
        });
        let c = Client::new(Duration::from_millis(300));
        c.channel(&ep).expect("channel");
        let cached = |c: &Client| c.channels.lock().expect("lock").contains_key(&ep);
        assert!(cached(&c));
        let e = c.status(&ep).await.expect_err("no answer");
        assert_eq!(e, ClientError::Timeout { endpoint: ep.clone() });
        assert!(!cached(&c), "the channel of a timed-out call is still cached");
        held.abort();
    }
}
