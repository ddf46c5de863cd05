//! `kvctl backup save|list|fetch|restore`: backups of a cluster in an
//! object store (S3-compatible, GCS, Azure) or a local directory (a PVC).
//! - `save` streams a snapshot from a healthy member (a follower when one
//!   is up to date) through compression into a multipart upload, checks the
//!   snapshot's SHA-256 before it completes the upload (a bad stream leaves
//!   no object), checks the stored size, prunes by count and age, and
//!   prints one JSON result line (also the pod's termination message, as
//!   `kvctl compact` does: kvd-operator's backup Jobs run it);
//! - `list` shows a cluster's backups, newest first;
//! - `fetch` downloads one (the newest by default), decompresses it and
//!   checks its SHA-256, into a snapshot file for `kvctl snapshot restore`
//!   or `etcdutl`; `verify` does the same without keeping it (what
//!   kvd-operator checks before it creates a cluster from a backup);
//! - `restore` is fetch and `kvctl snapshot restore` in one step, for a
//!   member's init container: a new member's data dir from a backup.

pub mod codec;
pub mod destination;
pub mod fetch;
pub mod retention;
pub mod save;

use clap::Subcommand;

use crate::maintenance::MaintenanceError;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Takes a backup now.
    Save(save::SaveArgs),
    /// Lists a cluster's backups, newest first.
    List(fetch::ListArgs),
    /// Downloads a backup into a snapshot file, checking its SHA-256.
    Fetch(fetch::FetchArgs),
    /// Checks a backup (decompresses it and checks its SHA-256) without keeping it.
    Verify(fetch::VerifyArgs),
    /// Creates a new member's data dir from a backup (fetch, then snapshot restore).
    Restore(fetch::RestoreArgs),
}

/// Why a backup command failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Status, MemberList or the snapshot stream failed, or no member may serve it.
    #[error(transparent)]
    Cluster(#[from] MaintenanceError),
    /// The object store refused or failed.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The snapshot or the stored object is not what it must be.
    #[error("backup {what}: {why}")]
    Invalid { what: String, why: String },
    /// No backup where one was asked for.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
}

impl From<kvd_api::client::ClientError> for BackupError {
    fn from(e: kvd_api::client::ClientError) -> Self {
        BackupError::Cluster(MaintenanceError::Client(e))
    }
}

pub async fn run(cmd: BackupCmd) -> Result<(), BackupError> {
    match cmd {
        BackupCmd::Save(a) => save::run(a).await,
        BackupCmd::List(a) => fetch::list_cmd(a).await,
        BackupCmd::Fetch(a) => fetch::fetch_cmd(a).await,
        BackupCmd::Verify(a) => fetch::verify_cmd(a).await,
        BackupCmd::Restore(a) => fetch::restore_cmd(a).await,
    }
}
