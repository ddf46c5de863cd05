//! `kvctl compact`: compacts the keyspace to the current revision minus a
//! retention in revisions, or to the revision that was current a retention
//! duration ago (see `checkpoints.rs`). Nothing to compact is success.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use kvd_api::client::{Client, Compacted};
use kvd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::request_op::Request as Op;
use kvd_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde_json::json;

use super::checkpoints::{self, CHECKPOINT_KEY, Checkpoint};
use super::{MaintenanceError, TERMINATION_LOG, TlsArgs, emit, rfc3339};

#[derive(Args)]
pub struct CompactArgs {
    /// Comma-separated endpoints (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Keep this many revisions below the current one (default 0: compact to the current revision).
    #[arg(long, conflicts_with = "retain_duration")]
    retain_revisions: Option<i64>,
    /// Keep at least this much history ("1h", "90m"): compact to the revision
    /// that was current this long ago, as remembered in the cluster under
    /// --checkpoint-key by earlier runs (the first run compacts nothing).
    #[arg(long, value_parser = humantime::parse_duration)]
    retain_duration: Option<Duration>,
    /// Wait until the compaction is applied to the backend of every member.
    #[arg(long)]
    physical: bool,
    /// Key holding the (time, revision) checkpoints for --retain-duration.
    #[arg(long, default_value = CHECKPOINT_KEY)]
    checkpoint_key: String,
    /// Timeout of each call.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: TlsArgs,
    /// Where the result line also goes, if the file exists (the Kubernetes termination message).
    #[arg(long, default_value = TERMINATION_LOG, hide = true)]
    termination_log: PathBuf,
}

/// The checkpoint key as read: the revision of the read, the key's mod revision and value.
struct Read {
    current: i64,
    mod_revision: i64,
    value: Vec<u8>,
}

async fn read(client: &Client, endpoints: &[String], key: &str) -> Result<Read, MaintenanceError> {
    let r = client
        .any(endpoints, |c, ep| async move {
            let mut kv = KvClient::new(c);
            let req = RangeRequest { key: key.as_bytes().to_vec(), ..RangeRequest::default() };
            client.timed(&ep, client.timeout(), kv.range(req)).await
        })
        .await?;
    let kv = r.kvs.into_iter().next();
    Ok(Read {
        current: r.header.map(|h| h.revision).unwrap_or(0),
        mod_revision: kv.as_ref().map(|k| k.mod_revision).unwrap_or(0),
        value: kv.map(|k| k.value).unwrap_or_default(),
    })
}

/// Stores `cps` unless the key changed since it was read (another run's
/// checkpoints win then). Returns whether it was written.
async fn store(
    client: &Client,
    endpoints: &[String],
    key: &str,
    seen_mod: i64,
    cps: &[Checkpoint],
) -> Result<bool, MaintenanceError> {
    let value = checkpoints::encode(cps);
    let r = client
        .any(endpoints, |c, ep| {
            let value = value.clone();
            async move {
                let mut kv = KvClient::new(c);
                let put = PutRequest { key: key.as_bytes().to_vec(), value, ..PutRequest::default() };
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(TargetUnion::ModRevision(seen_mod)),
                        ..Compare::default()
                    }],
                    success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
                    failure: vec![],
                };
                client.timed(&ep, client.timeout(), kv.txn(txn)).await
            }
        })
        .await?;
    Ok(r.succeeded)
}

/// Runs `kvctl compact`.
pub async fn run(a: CompactArgs) -> Result<(), MaintenanceError> {
    if a.retain_revisions.is_some_and(|n| n < 0) {
        return Err(MaintenanceError::Usage("--retain-revisions must not be negative".into()));
    }
    let client = a.tls.apply(Client::new(a.timeout))?;
    let now = SystemTime::now();
    let now_ms = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let seen = read(&client, &a.endpoints, &a.checkpoint_key).await?;
    let (target, keep) = match a.retain_duration {
        Some(retention) => {
            let stored = checkpoints::decode(&seen.value).unwrap_or_else(|e| {
                eprintln!("kvctl: warning: ignoring unreadable checkpoints under {:?}: {e}", a.checkpoint_key);
                Vec::new()
            });
            let plan = checkpoints::plan(&stored, now_ms, seen.current, retention);
            let keep = (plan.keep != stored).then_some(plan.keep);
            (plan.target.unwrap_or(0), keep)
        }
        None => (seen.current - a.retain_revisions.unwrap_or(0), None),
    };
    let compacted =
        if target > 0 { client.compact(&a.endpoints, target, a.physical).await? == Compacted::Done } else { false };
    // After the compaction: a checkpoint lost to a failure here only means keeping more history.
    if let Some(keep) = keep
        && !store(&client, &a.endpoints, &a.checkpoint_key, seen.mod_revision, &keep).await?
    {
        eprintln!("kvctl: warning: checkpoints changed under us (a concurrent run); keeping theirs");
    }
    let result = json!({
        "compactedRevision": if compacted { Some(target) } else { None },
        "targetRevision": target.max(0),
        "currentRevision": seen.current,
        "time": rfc3339(now),
    });
    emit(&result, &a.termination_log);
    Ok(())
}
