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
use std::path::Path;
use std::time::SystemTime;

use kvd_api::client::ClientError;

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
