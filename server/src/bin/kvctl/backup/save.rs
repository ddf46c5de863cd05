//! `kvctl backup save`: picks the member to read (a healthy, up-to-date
//! follower; the leader only when no follower qualifies), streams its
//! `Maintenance.Snapshot` through the compressor into a multipart upload
//! of at most [`PART_SIZE`] × [`PARALLEL_PARTS`] bytes in flight, and
//! completes the upload only once the snapshot's SHA-256 trailer matched;
//! then checks the snapshot's size against the member's dbSize (it cannot
//! be larger) and the stored object's size against what was written, and
//! prunes old backups.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use futures::TryStreamExt;
use kvd_api::client::Client;
use kvd_api::etcdserverpb::SnapshotRequest;
use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use object_store::{ObjectStoreExt, WriteMultipart};
use serde_json::json;

use super::BackupError;
use super::codec::{Compression, Encoder, Trailer, hex};
use super::destination::{Destination, parse_object_name};
use super::retention::{Stored, to_prune};
use crate::maintenance::{MaintenanceError, TERMINATION_LOG, TlsArgs, emit, rfc3339};

/// Bytes per uploaded part (S3 wants at least 5 MiB but for the last).
const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once.
const PARALLEL_PARTS: usize = 4;
/// A follower this many entries behind the most advanced member is not read.
const MAX_LAG: u64 = 1000;
/// How many times the members are surveyed while only the leader qualifies.
const SURVEYS: u32 = 3;
/// The pause between two surveys.
const SURVEY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct SaveArgs {
    /// Comma-separated endpoints (host:port or http://host:port); members
    /// are then reached on the client URLs MemberList gives.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Destination: s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix, or a local directory (file:///path).
    #[arg(long)]
    to: String,
    /// The cluster's name: backups go under <prefix>/<cluster>/.
    #[arg(long, default_value = "default")]
    cluster: String,
    #[arg(long, value_enum, default_value = "zstd")]
    compression: Compression,
    /// Keep at most this many backups of the cluster (the newest).
    #[arg(long)]
    keep_last: Option<usize>,
    /// Remove backups older than this ("7d", "36h"); the newest is always kept.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_age: Option<Duration>,
    /// Timeout of each call; the snapshot stream may be silent this long times 12.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: TlsArgs,
    /// Where the result line also goes, if the file exists (the Kubernetes termination message).
    #[arg(long, default_value = TERMINATION_LOG, hide = true)]
    termination_log: PathBuf,
}

/// The member a backup is read from, as its Status described it.
#[derive(Debug)]
struct Source {
    name: String,
    id: u64,
    endpoint: String,
    leader: bool,
    revision: i64,
    db_size: i64,
    applied: u64,
}

impl Source {
    /// Member `id` behind `endpoint`, as its Status `s` describes it.
    fn new(name: String, id: u64, endpoint: String, s: kvd_api::etcdserverpb::StatusResponse) -> Source {
        Source {
            name,
            id,
            endpoint,
            leader: s.leader == id,
            revision: s.header.map(|h| h.revision).unwrap_or(0),
            db_size: s.db_size,
            applied: s.raft_applied_index,
        }
    }
}

/// The member to read: among members that answer Status with a leader and
/// no errors, a follower at most [`MAX_LAG`] entries behind, the most
/// advanced first; else the leader. Members are reached on their client
/// URLs; when none answers there (a port-forward, say), the endpoints given.
/// A follower that did not qualify (no client URL published yet, no answer,
/// no leader known in an election, an alarm, behind) is asked again,
/// [`SURVEYS`] times in all and [`SURVEY_PAUSE`] apart, before the leader
/// is read; why each member did not qualify comes back beside the pick
/// (`membersSkipped` in the result).
async fn pick_source(client: &Client, endpoints: &[String]) -> Result<(Source, Vec<String>), BackupError> {
    let mut attempt = 1;
    loop {
        let (mut found, mut problems) = survey(client, endpoints).await?;
        let top = found.iter().map(|s| s.applied).max().unwrap_or(0);
        let behind = |s: &Source| s.applied + MAX_LAG < top;
        for s in found.iter().filter(|s| !s.leader && behind(s)) {
            problems.push(format!("{} ({:x}): applied {} of {top}", s.name, s.id, s.applied));
        }
        found.sort_by_key(|s| (s.leader || behind(s), std::cmp::Reverse(s.applied)));
        let pick = found.into_iter().next();
        let from_follower = pick.as_ref().is_some_and(|s| !s.leader);
        if from_follower || problems.is_empty() || attempt == SURVEYS {
            return match pick {
                Some(s) => Ok((s, problems)),
                None => Err(MaintenanceError::Refused(format!(
                    "no healthy member to back up from: {}",
                    problems.join("; ")
                ))
                .into()),
            };
        }
        eprintln!("kvctl: no follower qualifies yet (survey {attempt} of {SURVEYS}): {}", problems.join("; "));
        tokio::time::sleep(SURVEY_PAUSE).await;
        attempt += 1;
    }
}

/// Every voting member's Status (learners are not read), and why a member
/// that did not answer well is left out.
async fn survey(client: &Client, endpoints: &[String]) -> Result<(Vec<Source>, Vec<String>), BackupError> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for m in client.member_list(endpoints).await? {
        if m.is_learner {
            continue;
        }
        let Some(url) = m.client_ur_ls.first().cloned() else {
            // A member that has started publishes its client URLs through raft.
            problems.push(format!("{:x}: no client URL published yet", m.id));
            continue;
        };
        match client.status(&url).await {
            Ok(s) if s.leader != 0 && s.errors.is_empty() => found.push(Source::new(m.name, m.id, url, s)),
            Ok(s) => problems.push(format!("{} ({:x}): leader {:x}, errors {:?}", m.name, m.id, s.leader, s.errors)),
            Err(e) => problems.push(format!("{} ({:x}): {e}", m.name, m.id)),
        }
    }
    if found.is_empty() {
        for ep in endpoints {
            if let Ok(s) = client.status(ep).await
                && s.leader != 0
                && s.errors.is_empty()
            {
                let id = s.header.as_ref().map(|h| h.member_id).unwrap_or(0);
                found.push(Source::new(ep.clone(), id, ep.clone(), s));
            }
        }
    }
    Ok((found, problems))
}

/// What a finished upload was.
struct Uploaded {
    size: u64,
    stored: u64,
    sha: [u8; 32],
    format: &'static str,
}

/// Streams the snapshot of `source` into `key`; the upload is aborted
/// (nothing is left in the destination) unless the stream was whole.
async fn upload(
    client: &Client,
    source: &Source,
    dest: &Destination,
    key: &object_store::path::Path,
    compression: Compression,
    stall: Duration,
) -> Result<Uploaded, BackupError> {
    let mut c = MaintenanceClient::new(client.channel(&source.endpoint)?);
    let mut stream = client.timed(&source.endpoint, client.timeout(), c.snapshot(SnapshotRequest {})).await?;
    let mut w = WriteMultipart::new_with_chunk_size(dest.store.put_multipart(key).await?, PART_SIZE);
    let mut enc = Encoder::new(compression).map_err(|e| BackupError::Io(e.to_string()))?;
    let (mut trailer, mut stored, mut ended, mut format) = (Trailer::default(), 0u64, false, "kvd");
    let invalid = |why: String| BackupError::Invalid { what: format!("from {}", source.name), why };
    let res: Result<(), BackupError> = async {
        loop {
            let msg = match tokio::time::timeout(stall, stream.message()).await {
                Err(_) => return Err(invalid(format!("the snapshot stream was silent for {stall:?}"))),
                Ok(Err(s)) => return Err(invalid(format!("the snapshot stream failed: {}", s.message()))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(m))) => m,
            };
            if trailer.len() == 0 && kvd::snapshot::bbolt::looks_like_bbolt(&msg.blob) {
                format = "etcd";
            }
            trailer.update(&msg.blob);
            enc.write(&msg.blob).map_err(|e| BackupError::Io(e.to_string()))?;
            let out = enc.take();
            stored += out.len() as u64;
            w.write(&out);
            w.wait_for_capacity(PARALLEL_PARTS).await?;
            ended = msg.remaining_bytes == 0;
        }
        if !ended {
            return Err(invalid(format!("the snapshot stream ended early, after {} bytes", trailer.len())));
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        let _ = w.abort().await;
        return Err(e);
    }
    let size = trailer.len();
    let sha = match trailer.finish() {
        Ok(sha) => sha,
        Err(why) => {
            let _ = w.abort().await;
            return Err(invalid(why));
        }
    };
    let last = match enc.finish() {
        Ok(last) => last,
        Err(e) => {
            let _ = w.abort().await;
            return Err(BackupError::Io(e.to_string()));
        }
    };
    stored += last.len() as u64;
    w.write(&last);
    w.finish().await?;
    Ok(Uploaded { size, stored, sha, format })
}

/// The backups of `name` in `dest`.
pub async fn stored(dest: &Destination, name: &str) -> Result<Vec<Stored>, BackupError> {
    let prefix = dest.cluster_prefix(name);
    let metas: Vec<object_store::ObjectMeta> = dest.store.list(Some(&prefix)).try_collect().await?;
    Ok(metas
        .into_iter()
        .filter_map(|m| {
            // Only objects directly under the prefix, named as backups.
            let rest = m.location.prefix_match(&prefix)?.collect::<Vec<_>>();
            let [file] = rest.as_slice() else { return None };
            let (at, revision, _) = parse_object_name(file.as_ref())?;
            Some(Stored { key: m.location.to_string(), at, revision, size: m.size })
        })
        .collect())
}

pub async fn run(a: SaveArgs) -> Result<(), BackupError> {
    if a.keep_last == Some(0) {
        return Err(BackupError::Usage("--keep-last must be at least 1".into()));
    }
    let dest = Destination::parse(&a.to)?;
    let client = a.tls.apply(Client::new(a.timeout))?;
    let (source, skipped) = pick_source(&client, &a.endpoints).await?;
    let started = Instant::now();
    let at = SystemTime::now();
    let key = dest.key(&a.cluster, at, source.revision, a.compression);
    let up = upload(&client, &source, &dest, &key, a.compression, a.timeout * 12).await?;
    // A snapshot holds the database's rows (kvd) or is its file (etcd): it
    // cannot be larger than the member's database was, before or after.
    let db_size = client.status(&source.endpoint).await.map(|s| s.db_size).unwrap_or(0).max(source.db_size);
    if up.size.saturating_sub(32) > db_size.max(0) as u64 {
        let _ = dest.store.delete(&key).await;
        return Err(BackupError::Invalid {
            what: key.to_string(),
            why: format!("the snapshot has {} bytes but the member's database only {db_size}", up.size),
        });
    }
    let head = dest.store.head(&key).await?;
    if head.size != up.stored {
        let _ = dest.store.delete(&key).await;
        return Err(BackupError::Invalid {
            what: key.to_string(),
            why: format!("{} bytes were written but the store holds {}", up.stored, head.size),
        });
    }
    let now = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut pruned = Vec::new();
    if a.keep_last.is_some() || a.max_age.is_some() {
        let all = stored(&dest, &a.cluster).await?;
        for s in to_prune(&all, a.keep_last, a.max_age, now) {
            // The one just written is the newest, never pruned.
            dest.store.delete(&object_store::path::Path::from(s.key.as_str())).await?;
            pruned.push(s.key);
        }
    }
    let result = json!({
        "task": "backup",
        "result": "saved",
        "key": key.to_string(),
        "destination": dest.url,
        "member": source.name,
        "memberId": format!("{:x}", source.id),
        "fromLeader": source.leader,
        "membersSkipped": skipped,
        "revision": source.revision,
        "size": up.size,
        "storedSize": up.stored,
        "dbSize": db_size,
        "sha256": hex(&up.sha),
        "format": up.format,
        "compression": a.compression.as_str(),
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "pruned": pruned,
        "time": rfc3339(at),
    });
    emit(&result, &a.termination_log);
    Ok(())
}
