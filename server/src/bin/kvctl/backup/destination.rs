//! Where backups go: an object store and a prefix in it, from a URL
//! (`s3://bucket/prefix`, `gs://…`, `az://container/prefix`, or a local
//! directory as `file:///path` or a bare absolute path, such as a mounted
//! PVC). Credentials and endpoints come from the environment, as the
//! object_store crate reads them: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP` for S3-compatible servers; `GOOGLE_*` and `AZURE_*`
//! likewise. A backup's object key is `<prefix>/<name>/<time>-r<revision>.snap`
//! with `.gz` or `.zst` after it when compressed; keys sort by time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use object_store::ObjectStore;
use object_store::path::Path;

use super::BackupError;
use super::codec::Compression;

/// An object store and the prefix under which backups live.
pub struct Destination {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL as given, for messages.
    pub url: String,
}

impl Destination {
    /// The destination named by `url`.
    pub fn parse(url: &str) -> Result<Destination, BackupError> {
        let bad = |m: String| BackupError::Usage(format!("destination {url:?}: {m}"));
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r),
            None if url.starts_with('/') => ("file", url),
            None => return Err(bad("expected s3://, gs://, az://, file:// or an absolute path".into())),
        };
        let split_bucket = || match rest.split_once('/') {
            Some((b, p)) => (b.to_string(), p.trim_matches('/').to_string()),
            None => (rest.to_string(), String::new()),
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "s3" | "s3a" => {
                let (bucket, prefix) = split_bucket();
                let s = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(s), prefix)
            }
            "gs" => {
                let (bucket, prefix) = split_bucket();
                let s = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(s), prefix)
            }
            "az" | "azure" | "abfs" => {
                let (container, prefix) = split_bucket();
                let s = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(&container)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(s), prefix)
            }
            "file" => {
                let dir = std::path::Path::new(rest);
                if !dir.is_absolute() {
                    return Err(bad("a local destination must be an absolute path".into()));
                }
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                // fsync: a PVC's backups survive a node's power cut; partial
                // uploads are removed when they fail.
                let s = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                (Arc::new(s), String::new())
            }
            other => return Err(bad(format!("unknown scheme {other:?}"))),
        };
        Ok(Destination { store, prefix: Path::from(prefix), url: url.to_string() })
    }

    /// Where the backups of cluster `name` live; `/` in it nests
    /// (`<namespace>/<name>`, as kvd-operator names its clusters).
    pub fn cluster_prefix(&self, name: &str) -> Path {
        name.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// The object key of a backup of `name` taken at `at`, of `revision`.
    pub fn key(&self, name: &str, at: SystemTime, revision: i64, compression: Compression) -> Path {
        self.cluster_prefix(name).join(object_name(at, revision, compression))
    }
}

/// `20261206T034522Z-r1234.snap.zst`: the time (UTC, to the second), the
/// revision and the compression.
pub fn object_name(at: SystemTime, revision: i64, compression: Compression) -> String {
    let stamp: String =
        humantime::format_rfc3339_seconds(at).to_string().chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{stamp}-r{revision}.snap{}", compression.suffix())
}

/// What a backup's object name says: time (seconds since the epoch),
/// revision and compression; None for objects that are not backups.
pub fn parse_object_name(name: &str) -> Option<(u64, i64, Compression)> {
    let (stem, compression) = Compression::ALL
        .iter()
        .rev()
        .find_map(|c| name.strip_suffix(c.suffix()).and_then(|s| s.strip_suffix(".snap")).map(|s| (s, *c)))?;
    let (stamp, rev) = stem.split_once("-r")?;
    let revision = rev.parse::<i64>().ok()?;
    // 20261206T034522Z -> 2026-12-06T03:45:22Z
    let b = stamp.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    let at = humantime::parse_rfc3339(&rfc).ok()?;
    Some((at.duration_since(UNIX_EPOCH).ok()?.as_secs(), revision, compression))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn object_names_round_trip_and_sort_by_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_528_722);
        for c in Compression::ALL {
            let n = object_name(t, 42, c);
            assert_eq!(parse_object_name(&n), Some((1_796_528_722, 42, c)), "{n}");
        }
        let a = object_name(t, 9, Compression::None);
        let b = object_name(t + Duration::from_secs(1), 10, Compression::None);
        assert!(a < b);
        for junk in ["x.snap", "20261206T034522Z-r.snap", "20261206T034522Z-r1.snap.bz2", "2026-r1.snap", "notes.txt"] {
            assert_eq!(parse_object_name(junk), None, "{junk}");
        }
    }

    #[test]
    fn destinations_parse() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = Destination::parse(&format!("file://{}", dir.path().display())).expect("file");
        assert_eq!(d.cluster_prefix("demo").as_ref(), "demo");
        assert_eq!(d.cluster_prefix("ns/demo").as_ref(), "ns/demo");
        assert!(Destination::parse("relative/dir").is_err());
        assert!(Destination::parse("ftp://x/y").is_err());
        let err = Destination::parse("file://relative").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("absolute"), "{err}");
    }
}
