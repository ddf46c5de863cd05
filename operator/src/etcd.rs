//! The operator's view of a cluster over the etcd v3 API: a wrapper of
//! kvd-api's shared maintenance client (`kvd_api::client`, which kvctl uses
//! too) that maps its errors to the operator's and merges MemberList, each
//! member's Status and the alarms into a `ClusterView`. The operator talks
//! to kvd only through this API.

use std::collections::HashMap;
use std::time::Duration;

use kvd_api::client::{Client, ClientError};
use kvd_api::etcdserverpb::{AlarmType, Member, StatusResponse};

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
    cluster: String,
    inner: Client,
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        match e.endpoint() {
            Some(endpoint) => Error::Etcd { endpoint: endpoint.to_string(), message: e.message() },
            None => Error::Unreachable(e.message()),
        }
    }
}

impl EtcdClient {
    /// `cluster` is the KvCluster name, used to map peer URLs to ordinals.
    pub fn new(cluster: &str, timeout: Duration) -> Self {
        EtcdClient { cluster: cluster.to_string(), inner: Client::new(timeout) }
    }

    /// The same client, dialing `to` whenever a member URL `from` is asked for
    /// (for tests and for running the operator outside the cluster through port-forwards).
    pub fn with_overrides(self, overrides: HashMap<String, String>) -> Self {
        EtcdClient { inner: self.inner.with_overrides(overrides), ..self }
    }

    /// The same client speaking TLS to the members, with channels of its own.
    pub fn with_tls(self, tls: kvd_api::client::ClientTls) -> Self {
        EtcdClient { inner: self.inner.with_tls(tls), ..self }
    }

    /// The same client (sharing channels) for another KvCluster.
    pub fn for_cluster(&self, cluster: &str) -> Self {
        EtcdClient { cluster: cluster.to_string(), ..self.clone() }
    }

    /// Status of the member behind `endpoint`.
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse> {
        Ok(self.inner.status(endpoint).await?)
    }

    /// MemberList, Status of every endpoint and the alarm list, merged.
    pub async fn view(&self, endpoints: &[String]) -> ClusterView {
        let answers = futures::future::join_all(endpoints.iter().map(|e| self.status(e))).await;
        // Ask members that just answered first, so dead ones cost no timeouts.
        let (up, down): (Vec<_>, Vec<_>) = endpoints.iter().zip(&answers).partition(|(_, a)| a.is_ok());
        let endpoints: Vec<String> = up.into_iter().chain(down).map(|(e, _)| e.clone()).collect();
        let endpoints = endpoints.as_slice();
        let statuses: Vec<StatusResponse> = answers.into_iter().filter_map(|s| s.ok()).collect();
        let list = self.inner.member_list(endpoints).await;
        let alarms = self.inner.alarms(endpoints).await.unwrap_or_default();
        ClusterView {
            members: list.ok().map(|l| l.iter().map(|m| self.member_obs(m, &statuses)).collect()),
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

    /// Whether etcd authentication is on.
    pub async fn auth_enabled(&self, endpoints: &[String]) -> Result<bool> {
        Ok(self.inner.auth_enabled(endpoints).await?)
    }

    /// The user `name` (with `password`, or certificate-only), granted `role`.
    pub async fn ensure_user(
        &self,
        endpoints: &[String],
        name: &str,
        password: Option<&str>,
        role: &str,
    ) -> Result<()> {
        Ok(self.inner.ensure_user(endpoints, name, password, role).await?)
    }

    /// AuthEnable or AuthDisable.
    pub async fn set_auth(&self, endpoints: &[String], on: bool) -> Result<()> {
        Ok(self.inner.set_auth(endpoints, on).await?)
    }

    /// MemberList (serializable) from the first of `endpoints` that answers.
    pub async fn member_list(&self, endpoints: &[String]) -> Result<Vec<Member>> {
        Ok(self.inner.member_list(endpoints).await?)
    }

    /// MemberAdd as a learner; returns the new member's id.
    pub async fn add_learner(&self, endpoints: &[String], peer_url: &str) -> Result<u64> {
        Ok(self.inner.add_learner(endpoints, peer_url).await?)
    }

    /// MemberPromote (fails with "learner ... not in sync" until caught up).
    pub async fn promote(&self, endpoints: &[String], id: u64) -> Result<()> {
        Ok(self.inner.promote(endpoints, id).await?)
    }

    /// MemberRemove.
    pub async fn remove(&self, endpoints: &[String], id: u64) -> Result<()> {
        Ok(self.inner.remove(endpoints, id).await?)
    }

    /// MoveLeader, sent to the current leader's endpoint.
    pub async fn move_leader(&self, leader_endpoint: &str, to: u64) -> Result<()> {
        Ok(self.inner.move_leader(leader_endpoint, to).await?)
    }

    /// Defragment the member behind `endpoint` (slow: longer timeout).
    pub async fn defragment(&self, endpoint: &str) -> Result<()> {
        Ok(self.inner.defragment(endpoint).await?)
    }

    /// Compact at `revision`; an already compacted revision counts as done.
    pub async fn compact(&self, endpoints: &[String], revision: i64) -> Result<()> {
        self.inner.compact(endpoints, revision, false).await?;
        Ok(())
    }

    /// AlarmRequest DEACTIVATE NOSPACE for `member_id`.
    pub async fn disarm_nospace(&self, endpoints: &[String], member_id: u64) -> Result<()> {
        Ok(self.inner.disarm_nospace(endpoints, member_id).await?)
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
pub(crate) mod tests;
