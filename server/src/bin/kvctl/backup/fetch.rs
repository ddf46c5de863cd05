//! `kvctl backup list|fetch|restore`: reading backups back. A fetched
//! backup is streamed from the store through the decompressor into
//! `<out>.part`, its SHA-256 trailer checked on the way; only a whole,
//! matching snapshot is fsynced and renamed to `<out>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde_json::json;

use super::BackupError;
use super::codec::{Compression, Decoder, Trailer, hex};
use super::destination::{Destination, parse_object_name};
use super::retention::chronological;
use super::save::stored;
use crate::maintenance::{TERMINATION_LOG, emit};
use crate::snapshot::{MemberArgs, restore_member};

/// Which backups: a destination and a cluster's name.
#[derive(Args, Clone)]
pub struct Source {
    /// Destination the backups were saved to (as `backup save --to`).
    #[arg(long)]
    from: String,
    /// The cluster's name, as `backup save --cluster`.
    #[arg(long, default_value = "default")]
    cluster: String,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    source: Source,
    /// table or json (one object per line)
    #[arg(short = 'w', long = "write-out", default_value = "table")]
    write_out: String,
}

#[derive(Args)]
pub struct FetchArgs {
    #[command(flatten)]
    source: Source,
    /// The backup: its object key or file name; the newest when absent.
    #[arg(long)]
    key: Option<String>,
    /// The snapshot file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source: Source,
    /// The backup: its object key or file name; the newest when absent.
    #[arg(long)]
    key: Option<String>,
    /// Where the result line also goes, if the file exists (the Kubernetes termination message).
    #[arg(long, default_value = TERMINATION_LOG, hide = true)]
    termination_log: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    source: Source,
    /// The backup: its object key or file name; the newest when absent.
    #[arg(long)]
    key: Option<String>,
    /// Do nothing (and succeed) when the data dir already holds something:
    /// for an init container that runs again when the pod restarts.
    #[arg(long)]
    skip_if_exists: bool,
    /// As kvd's flag: `existing` restores nothing (a member joining a
    /// running cluster gets its data from the peers), `new` restores.
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    #[command(flatten)]
    member: MemberArgs,
    /// Where the result line also goes, if the file exists (the Kubernetes termination message).
    #[arg(long, default_value = TERMINATION_LOG, hide = true)]
    termination_log: PathBuf,
}

/// A backup fetched into a local snapshot file.
struct Fetched {
    key: String,
    revision: Option<i64>,
    stored: u64,
    size: u64,
    sha: [u8; 32],
}

/// The object key `wanted` names (a key, or a file name under the
/// cluster's prefix), or the newest backup.
async fn resolve(dest: &Destination, cluster: &str, wanted: Option<&str>) -> Result<String, BackupError> {
    if let Some(k) = wanted {
        let under = dest.cluster_prefix(cluster).join(k);
        return Ok(if k.contains('/') { k.to_string() } else { under.to_string() });
    }
    let mut all = stored(dest, cluster).await?;
    all.sort_by(chronological);
    all.pop().map(|s| s.key).ok_or_else(|| {
        BackupError::NotFound(format!(
            "no backup of cluster {cluster:?} in {} (under {:?})",
            dest.url,
            dest.cluster_prefix(cluster).to_string()
        ))
    })
}

/// A file (or nothing, to only check) that also feeds the trailer check.
struct Checked {
    file: Option<std::io::BufWriter<std::fs::File>>,
    trailer: Trailer,
}

impl Write for Checked {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = match self.file.as_mut() {
            Some(f) => f.write(b)?,
            None => b.len(),
        };
        self.trailer.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// Streams backup `key` through the decompressor and the trailer check
/// into `out` (written as `<out>.part`, fsynced and renamed once whole),
/// or nowhere when `out` is None.
async fn fetch(dest: &Destination, key: &str, out: Option<&Path>) -> Result<Fetched, BackupError> {
    let path = object_store::path::Path::from(key);
    let file_name = path.filename().unwrap_or_default().to_string();
    let parsed = parse_object_name(&file_name);
    let compression = parsed.map(|p| p.2).unwrap_or_else(|| {
        Compression::ALL
            .into_iter()
            .rev()
            .find(|c| !c.suffix().is_empty() && file_name.ends_with(c.suffix()))
            .unwrap_or(Compression::None)
    });
    let got = match dest.store.get(&path).await {
        Err(object_store::Error::NotFound { .. }) => {
            return Err(BackupError::NotFound(format!("backup {key:?} is not in {}", dest.url)));
        }
        r => r?,
    };
    let part =
        out.map(|o| o.with_file_name(format!("{}.part", o.file_name().and_then(|n| n.to_str()).unwrap_or("snapshot"))));
    let shown = part.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let io = |e: std::io::Error| BackupError::Io(format!("{shown}: {e}"));
    let file = match &part {
        Some(p) => Some(std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(p).map_err(io)?)),
        None => None,
    };
    let sink = Checked { file, trailer: Trailer::default() };
    let res = async {
        let mut dec = Decoder::new(compression, sink).map_err(io)?;
        let mut stream = got.into_stream();
        let mut stored = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            stored += chunk.len() as u64;
            dec.write(&chunk).map_err(|e| BackupError::Invalid {
                what: key.to_string(),
                why: format!("cannot decompress ({}): {e}", compression.as_str()),
            })?;
        }
        let mut sink = dec.finish().map_err(|e| BackupError::Invalid {
            what: key.to_string(),
            why: format!("the {} stream is cut short: {e}", compression.as_str()),
        })?;
        sink.flush().map_err(io)?;
        if let Some(f) = &sink.file {
            f.get_ref().sync_all().map_err(io)?;
        }
        let size = sink.trailer.len();
        let sha = sink.trailer.finish().map_err(|why| BackupError::Invalid { what: key.to_string(), why })?;
        Ok::<_, BackupError>((stored, size, sha))
    }
    .await;
    match (res, part, out) {
        (Ok((stored, size, sha)), part, out) => {
            if let (Some(part), Some(out)) = (part, out) {
                std::fs::rename(&part, out).map_err(|e| BackupError::Io(format!("{}: {e}", out.display())))?;
            }
            Ok(Fetched { key: key.to_string(), revision: parsed.map(|p| p.1), stored, size, sha })
        }
        (Err(e), part, _) => {
            if let Some(p) = part {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

pub async fn list_cmd(a: ListArgs) -> Result<(), BackupError> {
    let dest = Destination::parse(&a.source.from)?;
    let mut all = stored(&dest, &a.source.cluster).await?;
    all.sort_by(|a, b| chronological(b, a));
    if a.write_out == "json" {
        for s in &all {
            println!("{}", json!({ "key": s.key, "revision": s.revision, "size": s.size, "time": s.at }));
        }
        return Ok(());
    }
    println!("{:<72} {:>12} {:>14}", "KEY", "REVISION", "SIZE");
    for s in &all {
        println!("{:<72} {:>12} {:>14}", s.key, s.revision, s.size);
    }
    Ok(())
}

pub async fn fetch_cmd(a: FetchArgs) -> Result<(), BackupError> {
    let dest = Destination::parse(&a.source.from)?;
    let key = resolve(&dest, &a.source.cluster, a.key.as_deref()).await?;
    let f = fetch(&dest, &key, Some(&a.out)).await?;
    println!(
        "{}",
        json!({ "task": "fetch", "key": f.key, "revision": f.revision, "storedSize": f.stored, "size": f.size,
                "sha256": hex(&f.sha), "out": a.out.display().to_string() })
    );
    Ok(())
}

pub async fn verify_cmd(a: VerifyArgs) -> Result<(), BackupError> {
    let dest = Destination::parse(&a.source.from)?;
    let key = resolve(&dest, &a.source.cluster, a.key.as_deref()).await?;
    let f = fetch(&dest, &key, None).await?;
    let result = json!({ "task": "verify", "result": "valid", "key": f.key, "revision": f.revision,
                         "storedSize": f.stored, "size": f.size, "sha256": hex(&f.sha),
                         "time": crate::maintenance::rfc3339(std::time::SystemTime::now()) });
    emit(&result, &a.termination_log);
    Ok(())
}

pub async fn restore_cmd(a: RestoreArgs) -> Result<(), BackupError> {
    let dir = a.member.data_dir();
    // A data dir is taken once it has `member/` (a mount point, empty or
    // with lost+found, is not).
    let occupied = dir.join("member").exists();
    let skip = if a.initial_cluster_state == "existing" {
        Some("the member joins an existing cluster")
    } else if occupied && a.skip_if_exists {
        Some("the data dir already holds data")
    } else {
        None
    };
    if let Some(why) = skip {
        let result =
            json!({ "task": "restore", "result": "skipped", "dataDir": dir.display().to_string(), "why": why });
        emit(&result, &a.termination_log);
        return Ok(());
    }
    let dest = Destination::parse(&a.source.from)?;
    let key = resolve(&dest, &a.source.cluster, a.key.as_deref()).await?;
    // The download goes inside the data dir: in a pod that is the member's
    // volume, the one place sure to be writable and large enough.
    let fresh = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|e| BackupError::Io(format!("{}: {e}", dir.display())))?;
    let snap = dir.join(".backup.snap");
    let f = match fetch(&dest, &key, Some(&snap)).await {
        Ok(f) => f,
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e);
        }
    };
    let restored = restore_member(&snap, &a.member, false);
    let _ = std::fs::remove_file(&snap);
    if restored.is_err() && fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let st = restored.map_err(|why| BackupError::Invalid { what: key.clone(), why })?;
    let result = json!({
        "task": "restore", "result": "restored", "key": key, "dataDir": dir.display().to_string(),
        "revision": st.revision, "keys": st.keys, "size": f.size, "sha256": hex(&f.sha),
    });
    emit(&result, &a.termination_log);
    Ok(())
}
