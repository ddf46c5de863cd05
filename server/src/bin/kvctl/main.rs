//! `kvctl`: kvd's operations tool.
//! - `kvctl bench put|range|txn-put|txn-mixed|watch-latency|lease-keepalive`:
//!   a load generator that speaks the etcd v3 API (any etcd or kvd endpoint), following etcd's benchmark
//!   tool's flags.
//! - `kvctl snapshot status FILE` and `kvctl snapshot restore FILE ...`: read
//!   a snapshot saved with `etcdctl snapshot save` from kvd or etcd, and
//!   create a new member's data dir from it, as `etcdutl snapshot` does;
//!   `kvctl snapshot export FILE OUT` writes a kvd snapshot as etcd's.
//! - `kvctl backup save|list|fetch|restore`: backups in S3, GCS, Azure or a
//!   directory, and new members' data dirs made from them.
//! - `kvctl compact` and `kvctl defrag [--rolling]`: scheduled maintenance
//!   (what kvd-operator's CronJobs run), printing one JSON result line that
//!   also becomes the pod's termination message.

mod alloc;
mod backup;
mod bench;
mod maintenance;
mod snapshot;

use clap::{Parser, Subcommand};

use bench::Workload;

/// mimalloc for `kvctl bench`, the system allocator otherwise (alloc.rs).
#[global_allocator]
static ALLOC: alloc::KvctlAlloc = alloc::KvctlAlloc;
use snapshot::{SnapshotCmd, snapshot_cmd};

#[derive(Parser)]
#[command(name = "kvctl", version, about = "kvd operations tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load generators.
    Bench {
        #[command(subcommand)]
        workload: Workload,
    },
    /// Compact the keyspace to the current revision minus a retention
    /// (`--retain-revisions N` or `--retain-duration 1h`); nothing to compact is success.
    Compact(maintenance::compact::CompactArgs),
    /// Defragment members one at a time; `--rolling`: followers first, then
    /// MoveLeader and the former leader, refusing unless every member is healthy.
    Defrag(maintenance::defrag::DefragArgs),
    /// Backups in an object store or a directory: save, list, fetch, restore.
    Backup {
        #[command(subcommand)]
        cmd: backup::BackupCmd,
    },
    /// Snapshot files.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // HTTPS to object stores (reqwest's rustls) signs with ring, as the
    // gRPC channels do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Bench { workload } => bench::run(workload).await,
            Cmd::Compact(a) => maintenance::compact::run(a).await.map_err(|e| e.to_string()),
            Cmd::Defrag(a) => maintenance::defrag::run(a).await.map_err(|e| e.to_string()),
            Cmd::Backup { cmd } => backup::run(cmd).await.map_err(|e| e.to_string()),
            Cmd::Snapshot { cmd } => snapshot_cmd(cmd),
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
