//! `kvctl defrag`: defragments members one at a time. With `--rolling` it
//! asks MemberList and every member's Status first and refuses to start
//! unless every member is healthy (defragmenting one while another is down
//! leaves no quorum margin); then it defragments the followers one by one,
//! moves leadership to the most up-to-date healthy follower and defragments
//! the former leader last. Members whose free fraction
//! `(dbSize - dbSizeInUse) / dbSize` is below `--skip-if-free-below` are skipped.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use kvd_api::client::Client;
use kvd_api::etcdserverpb::StatusResponse;
use serde_json::{Value, json};

use super::{MaintenanceError, TERMINATION_LOG, TlsArgs, emit, rfc3339};

#[derive(Args)]
pub struct DefragArgs {
    /// Comma-separated endpoints (host:port or http://host:port). With
    /// --rolling any member (or a Service in front of them) will do: members
    /// are then reached on the client URLs MemberList gives.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Every member, followers first, the leader last after a MoveLeader;
    /// refuses to start unless every member is healthy.
    #[arg(long)]
    rolling: bool,
    /// Skip members whose free fraction (dbSize - dbSizeInUse) / dbSize is below this (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    skip_if_free_below: f64,
    /// Timeout of each call but Defragment.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Timeout of each Defragment.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    defrag_timeout: Duration,
    #[command(flatten)]
    tls: TlsArgs,
    /// Where the result line also goes, if the file exists (the Kubernetes termination message).
    #[arg(long, default_value = TERMINATION_LOG, hide = true)]
    termination_log: PathBuf,
}

/// One member to defragment.
struct Target {
    name: String,
    id: u64,
    url: String,
    status: StatusResponse,
    is_learner: bool,
}

fn free_fraction(s: &StatusResponse) -> f64 {
    kvd_api::client::free_fraction(s.db_size, s.db_size_in_use)
}

/// Collects what the run reports.
#[derive(Default)]
struct Report {
    done: Vec<Value>,
    skipped: Vec<Value>,
}

impl Report {
    /// Defragments `t` unless it is under the threshold; records the bytes freed.
    async fn defrag(&mut self, client: &Client, t: &Target, threshold: f64) -> Result<(), MaintenanceError> {
        let free = free_fraction(&t.status);
        if free < threshold {
            self.skipped.push(json!({ "name": t.name, "id": format!("{:x}", t.id), "freeFraction": free }));
            return Ok(());
        }
        client.defragment(&t.url).await?;
        let after = client.status(&t.url).await.map(|s| s.db_size).unwrap_or(t.status.db_size);
        let freed = (t.status.db_size - after).max(0);
        self.done.push(json!({ "name": t.name, "id": format!("{:x}", t.id), "bytesFreed": freed }));
        Ok(())
    }
}

fn refused(t: &str, why: impl std::fmt::Display) -> MaintenanceError {
    MaintenanceError::Refused(format!(
        "refusing to defragment: member {t} is unhealthy ({why}); every member must be healthy, \
         otherwise defragmenting one leaves no quorum margin"
    ))
}

/// Every member with its Status; refuses if any is unhealthy.
async fn healthy_members(client: &Client, endpoints: &[String]) -> Result<Vec<Target>, MaintenanceError> {
    let mut out = Vec::new();
    for m in client.member_list(endpoints).await? {
        let label = if m.name.is_empty() { format!("{:x}", m.id) } else { format!("{} ({:x})", m.name, m.id) };
        let Some(url) = m.client_ur_ls.first().cloned() else {
            return Err(refused(&label, "no client URL: not started"));
        };
        let status = client.status(&url).await.map_err(|e| refused(&label, e))?;
        if status.leader == 0 {
            return Err(refused(&label, "no leader"));
        }
        if !status.errors.is_empty() {
            return Err(refused(&label, status.errors.join("; ")));
        }
        out.push(Target { name: m.name, id: m.id, url, status, is_learner: m.is_learner });
    }
    if out.is_empty() {
        return Err(MaintenanceError::Refused("refusing to defragment: MemberList is empty".into()));
    }
    Ok(out)
}

/// MoveLeader from `leader` to `to`, then waits until `leader` follows someone else.
async fn move_leader(client: &Client, leader: &Target, to: &Target, wait: Duration) -> Result<(), MaintenanceError> {
    client.move_leader(&leader.url, to.id).await?;
    let deadline = Instant::now() + wait;
    loop {
        match client.status(&leader.url).await {
            Ok(s) if s.leader != 0 && s.leader != leader.id => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(MaintenanceError::Refused(format!(
                    "leadership did not leave {} within {wait:?}; not defragmenting it",
                    leader.name
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn rolling(client: &Client, a: &DefragArgs, report: &mut Report) -> Result<Option<String>, MaintenanceError> {
    let mut members = healthy_members(client, &a.endpoints).await?;
    members.sort_by(|x, y| x.name.cmp(&y.name).then(x.id.cmp(&y.id)));
    // The leader is the one most members name.
    let mut votes: Vec<(u64, usize)> = Vec::new();
    for l in members.iter().map(|m| m.status.leader) {
        match votes.iter_mut().find(|(id, _)| *id == l) {
            Some(v) => v.1 += 1,
            None => votes.push((l, 1)),
        }
    }
    let leader_id = votes.iter().max_by_key(|(_, n)| *n).map(|(id, _)| *id).unwrap_or(0);
    for m in members.iter().filter(|m| m.id != leader_id) {
        report.defrag(client, m, a.skip_if_free_below).await?;
    }
    let Some(leader) = members.iter().find(|m| m.id == leader_id) else {
        return Err(MaintenanceError::Refused(format!("leader {leader_id:x} is not in MemberList")));
    };
    if free_fraction(&leader.status) < a.skip_if_free_below {
        return report.defrag(client, leader, a.skip_if_free_below).await.map(|()| None);
    }
    let to = members.iter().filter(|m| m.id != leader_id && !m.is_learner).max_by_key(|m| m.status.raft_index);
    let moved = match to {
        Some(to) => {
            move_leader(client, leader, to, a.timeout * 4).await?;
            Some(to.name.clone())
        }
        None => None, // a single voter has nobody to hand over to: defragment in place
    };
    report.defrag(client, leader, a.skip_if_free_below).await?;
    Ok(moved)
}

/// Runs `kvctl defrag`.
pub async fn run(a: DefragArgs) -> Result<(), MaintenanceError> {
    if !(0.0..=1.0).contains(&a.skip_if_free_below) {
        return Err(MaintenanceError::Usage("--skip-if-free-below must be between 0 and 1".into()));
    }
    let client = a.tls.apply(Client::new(a.timeout).with_defrag_timeout(a.defrag_timeout))?;
    let mut report = Report::default();
    let moved = if a.rolling {
        rolling(&client, &a, &mut report).await?
    } else {
        for ep in &a.endpoints {
            let status = client.status(ep).await?;
            let id = status.header.as_ref().map(|h| h.member_id).unwrap_or(0);
            let t = Target { name: ep.clone(), id, url: ep.clone(), status, is_learner: false };
            report.defrag(&client, &t, a.skip_if_free_below).await?;
        }
        None
    };
    let result = json!({
        "members": report.done,
        "skipped": report.skipped,
        "leaderMovedTo": moved,
        "time": rfc3339(SystemTime::now()),
    });
    emit(&result, &a.termination_log);
    Ok(())
}
