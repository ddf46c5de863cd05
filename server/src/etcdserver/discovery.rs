//! What a member with an empty data dir asks the other members of
//! `--initial-cluster` before it starts (their peer `ClusterInfo`):
//!
//! - joining (`--initial-cluster-state existing`): the cluster's id and its
//!   own, the one MemberAdd gave the member with its peer URLs;
//! - bootstrapping (`new`): whether a running cluster already has a member
//!   with its peer URLs that has started. Then this data dir lost that
//!   member's data (votes cast, entries acknowledged), and starting would
//!   make a second cluster under the same id beside the first: refused, as
//!   etcd refuses with "member has already been bootstrapped".
//!
//! Either way a member that has started once is never restarted empty under
//! its old id; it must be removed and added back.

use std::time::Duration;

use kvd_api::kvdpeerpb::{ClusterInfoRequest, ClusterInfoResponse, ClusterMember};
use tracing::info;

use super::ServerError;
use super::bootstrap::ServerConfig;

/// One answer may take this long, name resolution included.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// This member's peer URLs (`--initial-advertise-peer-urls`), sorted.
fn own_urls(cfg: &ServerConfig) -> Vec<String> {
    let mut own = cfg.peer_urls.clone();
    own.sort();
    own
}

/// The other peer URLs of `--initial-cluster`.
fn others(cfg: &ServerConfig, own: &[String]) -> Vec<String> {
    let mut others: Vec<String> =
        cfg.initial_cluster.values().flatten().filter(|u| !own.contains(u)).cloned().collect();
    others.sort();
    others.dedup();
    others
}

/// `ClusterInfo` of the member at peer URL `url`.
async fn cluster_info(cfg: &ServerConfig, url: &str) -> Result<ClusterInfoResponse, String> {
    let ep = crate::tls::endpoint(url, cfg.peer_client_tls.as_ref()).map_err(|e| e.to_string())?;
    let ask = async {
        let ch = ep.connect_timeout(Duration::from_secs(1)).connect().await.map_err(|e| e.to_string())?;
        kvd_api::kvdpeerpb::peer_client::PeerClient::new(ch)
            .cluster_info(ClusterInfoRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(ASK_TIMEOUT, ask).await.unwrap_or_else(|_| Err("no answer".into()))
}

/// The member of `info` with peer URLs `own`.
fn find_me<'a>(info: &'a ClusterInfoResponse, own: &[String]) -> Option<&'a ClusterMember> {
    info.members.iter().find(|m| {
        let mut theirs = m.peer_urls.clone();
        theirs.sort();
        theirs == own
    })
}

fn lost(state: &str, m: &ClusterMember, own: &[String]) -> ServerError {
    ServerError::Internal(format!(
        "--initial-cluster-state {state}: member {:x} with peer URLs {own:?} has already started, and this \
         data dir is empty: its data is lost; remove the member (etcdctl member remove {:x}) and add it back \
         before starting it again",
        m.id, m.id
    ))
}

/// Joining: this member's id and the cluster's, asked of the others for up
/// to 30 s (MemberAdd may not have reached them yet).
pub(super) async fn discover_cluster(cfg: &ServerConfig) -> Result<(u64, u64), ServerError> {
    let own = own_urls(cfg);
    let others = others(cfg, &own);
    let mut last = String::from("no other member in --initial-cluster");
    for _ in 0..30 {
        for url in &others {
            match cluster_info(cfg, url).await {
                Ok(info) => match find_me(&info, &own) {
                    Some(m) if m.started => return Err(lost("existing", m, &own)),
                    Some(m) => return Ok((m.id, info.cluster_id)),
                    None => {
                        last = format!(
                            "{url}: the cluster has no member with peer URLs {own:?}; \
                             add this member (etcdctl member add) before starting it"
                        )
                    }
                },
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(ServerError::Internal(format!("--initial-cluster-state existing: cannot join ({last})")))
}

/// Bootstrapping: refuses when a running member knows this one as started.
/// Members that do not answer are no evidence either way (a new cluster's
/// members start at about the same time), so they are not waited for.
pub(super) async fn refuse_if_bootstrapped(cfg: &ServerConfig) -> Result<(), ServerError> {
    let own = own_urls(cfg);
    let others = others(cfg, &own);
    let answers = futures::future::join_all(others.iter().map(|u| cluster_info(cfg, u))).await;
    for (url, answer) in others.iter().zip(answers) {
        if let Ok(info) = answer
            && let Some(m) = find_me(&info, &own).filter(|m| m.started)
        {
            info!(peer = %url, member_id = %format!("{:x}", m.id), "a running member knows this member as started");
            return Err(lost("new", m, &own));
        }
    }
    Ok(())
}
