//! A thin multi-endpoint client over kvd-api's tonic clients: every call has
//! a timeout, cluster-wide calls try each endpoint in turn, member-specific
//! calls (Status, Defragment, MoveLeader) go to that member's own endpoint.
//! The operator talks to kvd only through this etcd v3 API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvd_api::etcdserverpb::alarm_request::AlarmAction;
use kvd_api::etcdserverpb::cluster_client::ClusterClient;
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kvd_api::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, Member, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MoveLeaderRequest, StatusRequest, StatusResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::observe::{AlarmKind, AlarmObs, MemberHealth, MemberObs};
use crate::{Error, Result};

/// What the members said in one round of questions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// None when no endpoint answered MemberList.
    pub members: Option<Vec<MemberObs>>,
    pub alarms: Vec<AlarmObs>,
}

/// Channels per endpoint, created lazily and reused across reconciles.
#[derive(Clone)]
pub struct EtcdClient {
    timeout: Duration,
    defrag_timeout: Duration,
    cluster: String,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Address overrides (member URL -> reachable URL), for tests and for
    /// running the operator outside the cluster through port-forwards.
    overrides: Arc<HashMap<String, String>>,
}

fn etcd_err(endpoint: &str, e: impl std::fmt::Display) -> Error {
    Error::Etcd { endpoint: endpoint.to_string(), message: e.to_string() }
}

impl EtcdClient {
    /// `cluster` is the KvCluster name, used to map peer URLs to ordinals.
    pub fn new(cluster: &str, timeout: Duration) -> Self {
        EtcdClient {
            timeout,
            defrag_timeout: timeout * 20,
            cluster: cluster.to_string(),
            channels: Arc::default(),
            overrides: Arc::default(),
        }
    }

    /// The same client, dialing `to` whenever a member URL `from` is asked for.
    pub fn with_overrides(self, overrides: HashMap<String, String>) -> Self {
        EtcdClient { overrides: Arc::new(overrides), ..self }
    }

    /// The same client (sharing channels) for another KvCluster.
    pub fn for_cluster(&self, cluster: &str) -> Self {
        EtcdClient { cluster: cluster.to_string(), ..self.clone() }
    }

    fn channel(&self, endpoint: &str, timeout: Duration) -> Result<Channel> {
        let mut channels = self.channels.lock().map_err(|_| etcd_err(endpoint, "channel cache poisoned"))?;
        if let Some(c) = channels.get(endpoint) {
            return Ok(c.clone());
        }
        let target = self.overrides.get(endpoint).map(String::as_str).unwrap_or(endpoint);
        let ep = Endpoint::from_shared(target.to_string())
            .map_err(|e| etcd_err(endpoint, e))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let c = ep.connect_lazy();
        channels.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    async fn timed<T, F>(&self, endpoint: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(etcd_err(endpoint, s.message())),
            Err(_) => Err(etcd_err(endpoint, "timed out")),
        }
    }

    /// Status of the member behind `endpoint`.
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        let mut c = MaintenanceClient::new(self.channel(endpoint, self.timeout)?);
        self.timed(endpoint, self.timeout, c.status(StatusRequest {})).await
    }

    /// Runs `f` against each endpoint until one succeeds.
    async fn any<T, F, Fut>(&self, endpoints: &[String], f: F) -> Result<T>
    where
        F: Fn(Channel, String) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut last = Error::Unreachable("no endpoints".into());
        for ep in endpoints {
            match self.channel(ep, self.timeout) {
                Ok(c) => match f(c, ep.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// MemberList, Status of every endpoint and the alarm list, merged.
    pub async fn view(&self, endpoints: &[String]) -> ClusterView {
        let answers = futures::future::join_all(endpoints.iter().map(|e| self.status(e))).await;
        // Ask members that just answered first, so dead ones cost no timeouts.
        let (up, down): (Vec<_>, Vec<_>) = endpoints.iter().zip(&answers).partition(|(_, a)| a.is_ok());
        let endpoints: Vec<String> = up.into_iter().chain(down).map(|(e, _)| e.clone()).collect();
        let endpoints = endpoints.as_slice();
        let statuses: Vec<StatusResponse> = answers.into_iter().filter_map(|s| s.ok()).collect();
        let list = self
            .any(endpoints, |c, ep| async move {
                let mut c = ClusterClient::new(c);
                self.timed(&ep, self.timeout, c.member_list(MemberListRequest { linearizable: false })).await
            })
            .await;
        let alarms = self
            .any(endpoints, |c, ep| async move {
                let mut c = MaintenanceClient::new(c);
                let req = AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
                self.timed(&ep, self.timeout, c.alarm(req)).await
            })
            .await
            .map(|r| r.alarms)
            .unwrap_or_default();
        ClusterView {
            members: list.ok().map(|l| l.members.iter().map(|m| self.member_obs(m, &statuses)).collect()),
            alarms: alarms
                .iter()
                .filter_map(|a| {
                    let kind = match AlarmType::try_from(a.alarm).ok()? {
                        AlarmType::Nospace => AlarmKind::Nospace,
                        AlarmType::Corrupt => AlarmKind::Corrupt,
                        AlarmType::None => return None,
                    };
                    Some(AlarmObs { member_id: a.member_id, kind })
                })
                .collect(),
        }
    }

    fn member_obs(&self, m: &Member, statuses: &[StatusResponse]) -> MemberObs {
        let peer_url = m.peer_ur_ls.first().cloned().unwrap_or_default();
        let health =
            statuses.iter().find(|s| s.header.as_ref().is_some_and(|h| h.member_id == m.id)).map(|s| MemberHealth {
                leader: s.leader,
                revision: s.header.as_ref().map(|h| h.revision).unwrap_or(0),
                raft_index: s.raft_index,
                db_size: s.db_size,
                db_size_in_use: s.db_size_in_use,
            });
        MemberObs {
            id: m.id,
            name: m.name.clone(),
            ordinal: crate::naming::ordinal_from_peer_url(&self.cluster, &peer_url),
            peer_url,
            client_url: m.client_ur_ls.first().cloned().unwrap_or_default(),
            is_learner: m.is_learner,
            health,
        }
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
        let mut c = MaintenanceClient::new(self.channel(leader_endpoint, self.timeout)?);
        let req = MoveLeaderRequest { target_id: to };
        self.timed(leader_endpoint, self.timeout, c.move_leader(req)).await.map(|_| ())
    }

    /// Defragment the member behind `endpoint` (slow: longer timeout).
    pub async fn defragment(&self, endpoint: &str) -> Result<()> {
        let mut c = MaintenanceClient::new(self.channel(endpoint, self.timeout)?);
        self.timed(endpoint, self.defrag_timeout, c.defragment(DefragmentRequest {})).await.map(|_| ())
    }

    /// Compact at `revision`; an already compacted revision counts as done.
    pub async fn compact(&self, endpoints: &[String], revision: i64) -> Result<()> {
        let r = self
            .any(endpoints, |c, ep| async move {
                let mut c = KvClient::new(c);
                let req = CompactionRequest { revision, physical: false };
                self.timed(&ep, self.timeout, c.compact(req)).await.map(|_| ())
            })
            .await;
        match r {
            Err(Error::Etcd { message, .. }) if message.contains("required revision has been compacted") => Ok(()),
            r => r,
        }
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
#[path = "etcd_tests.rs"]
pub(crate) mod tests;
