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

/// A file that also feeds the trailer check.
struct Checked {
    file: std::io::BufWriter<std::fs::File>,
    trailer: Trailer,
}

impl Write for Checked {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(b)?;
        self.trailer.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

async fn fetch(dest: &Destination, key: &str, out: &Path) -> Result<Fetched, BackupError> {
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
    let part = out.with_file_name(format!("{}.part", out.file_name().and_then(|n| n.to_str()).unwrap_or("snapshot")));
    let io = |e: std::io::Error| BackupError::Io(format!("{}: {e}", part.display()));
    let file = std::fs::File::create(&part).map_err(io)?;
    let sink = Checked { file: std::io::BufWriter::with_capacity(1 << 20, file), trailer: Trailer::default() };
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
        sink.file.get_ref().sync_all().map_err(io)?;
        let size = sink.trailer.len();
        let sha = sink.trailer.finish().map_err(|why| BackupError::Invalid { what: key.to_string(), why })?;
        Ok::<_, BackupError>((stored, size, sha))
    }
    .await;
    match res {
        Ok((stored, size, sha)) => {
            std::fs::rename(&part, out).map_err(|e| BackupError::Io(format!("{}: {e}", out.display())))?;
            Ok(Fetched { key: key.to_string(), revision: parsed.map(|p| p.1), stored, size, sha })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
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
    let f = fetch(&dest, &key, &a.out).await?;
    println!(
        "{}",
        json!({ "task": "fetch", "key": f.key, "revision": f.revision, "storedSize": f.stored, "size": f.size,
                "sha256": hex(&f.sha), "out": a.out.display().to_string() })
    );
    Ok(())
}

pub async fn restore_cmd(a: RestoreArgs) -> Result<(), BackupError> {
    let dir = a.member.data_dir();
    let occupied = std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if occupied && a.skip_if_exists {
        let result = json!({ "task": "restore", "result": "skipped", "dataDir": dir.display().to_string(),
                             "why": "the data dir already holds data" });
        emit(&result, &a.termination_log);
        return Ok(());
    }
    let dest = Destination::parse(&a.source.from)?;
    let key = resolve(&dest, &a.source.cluster, a.key.as_deref()).await?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| BackupError::Io(format!("{}: {e}", parent.display())))?;
    let snap = parent.join(format!(".{}.backup.snap", dir.file_name().and_then(|n| n.to_str()).unwrap_or("member")));
    let f = fetch(&dest, &key, &snap).await?;
    let restored = restore_member(&snap, &a.member, false);
    let _ = std::fs::remove_file(&snap);
    let st = restored.map_err(|why| BackupError::Invalid { what: key.clone(), why })?;
    let result = json!({
        "task": "restore", "result": "restored", "key": key, "dataDir": dir.display().to_string(),
        "revision": st.revision, "keys": st.keys, "size": f.size, "sha256": hex(&f.sha),
    });
    emit(&result, &a.termination_log);
    Ok(())
}
