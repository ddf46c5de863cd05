//! `kvctl compact` and `kvctl defrag`: scheduled maintenance over the etcd v3
//! API through kvd-api's shared maintenance client (`kvd_api::client`, which
//! kvd-operator uses too). Each command prints one JSON result line on stdout
//! and, when `/dev/termination-log` exists and is writable, writes the same
//! line there: the Kubernetes termination message the operator reads from
//! the finished Job's pod. Errors go to stderr with etcd's message and a
//! non-zero exit code.

pub mod checkpoints;
pub mod compact;
pub mod defrag;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;
use kvd_api::client::{Client, ClientError, ClientTls};

/// Where Kubernetes looks for a container's termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Why a maintenance command failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// An etcd call failed (etcd's message, with the endpoint).
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The cluster is not in a state where the command may run.
    #[error("{0}")]
    Refused(String),
    /// Flags that cannot work together.
    #[error("{0}")]
    Usage(String),
}

/// TLS flags, named as etcdctl's.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// CA bundle that signs the members' certificates: speak TLS to every
    /// endpoint (http:// and bare host:port are dialed as https://).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate, for members that require one (with --key).
    #[arg(long, requires = "key", requires = "cacert")]
    cert: Option<PathBuf>,
    /// Private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

impl TlsArgs {
    /// `client`, with TLS when --cacert is given.
    pub fn apply(&self, client: Client) -> Result<Client, MaintenanceError> {
        let Some(ca) = &self.cacert else { return Ok(client) };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| MaintenanceError::Usage(format!("{}: {e}", p.display())));
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        Ok(client.with_tls(ClientTls { ca: read(ca)?, identity }))
    }
}

/// RFC 3339 UTC time, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Prints `result` as one line and copies it to `termination_log` when that
/// file exists and is writable (never created: outside a pod it is absent).
pub fn emit(result: &serde_json::Value, termination_log: &Path) {
    let line = result.to_string();
    println!("{line}");
    if !termination_log.exists() {
        return;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(termination_log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("kvctl: warning: could not write {}: {e}", termination_log.display());
    }
}
