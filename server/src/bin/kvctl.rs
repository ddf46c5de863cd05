//! `kvctl`: kvd's operations tool.
//! - `kvctl bench put`: a load generator that speaks the etcd v3 API (any etcd
//!   or kvd endpoint), following etcd's benchmark tool's flags.
//! - `kvctl snapshot status FILE` and `kvctl snapshot restore FILE ...`: read
//!   a snapshot saved with `etcdctl snapshot save` from kvd, and create a new
//!   member's data dir from it, as `etcdutl snapshot` does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kvd_api::etcdserverpb::PutRequest;
use kvd_api::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

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
    /// Snapshot files.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Verifies a snapshot file and prints its hash, revision, keys and size.
    Status {
        file: std::path::PathBuf,
        /// table or json
        #[arg(short = 'w', long = "write-out", default_value = "table")]
        write_out: String,
    },
    /// Creates a new member's data dir from a snapshot file.
    Restore {
        file: std::path::PathBuf,
        #[arg(long, default_value = "default")]
        name: String,
        /// Defaults to `<name>.kvd`.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// `name=peerURL,...` (default: this member alone).
        #[arg(long)]
        initial_cluster: Option<String>,
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
        initial_advertise_peer_urls: Vec<String>,
    },
}

fn snapshot_cmd(cmd: SnapshotCmd) -> Result<(), String> {
    match cmd {
        SnapshotCmd::Status { file, write_out } => {
            let st = kvd::snapshot::status(&file).map_err(|e| e.to_string())?;
            print_status(&st, &write_out);
            Ok(())
        }
        SnapshotCmd::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
        } => {
            let spec = initial_cluster.unwrap_or_else(|| {
                initial_advertise_peer_urls.iter().map(|u| format!("{name}={u}")).collect::<Vec<_>>().join(",")
            });
            let cluster = kvd::config::parse_initial_cluster(&spec).map_err(|e| e.to_string())?;
            if !cluster.contains_key(&name) {
                return Err(format!("--initial-cluster does not contain this member's name {name:?}"));
            }
            let ids: Vec<u64> =
                cluster.values().map(|u| kvd::etcdserver::member_id(u, &initial_cluster_token)).collect();
            let identity = kvd::wal::Metadata {
                node_id: kvd::etcdserver::member_id(&initial_advertise_peer_urls, &initial_cluster_token),
                cluster_id: kvd::etcdserver::cluster_id(&ids, &initial_cluster_token),
            };
            let dir = data_dir.unwrap_or_else(|| std::path::PathBuf::from(format!("{name}.kvd")));
            let st = kvd::snapshot::restore(&file, &dir, identity).map_err(|e| e.to_string())?;
            println!(
                "restored snapshot {} (revision {}, {} keys) into {}",
                file.display(),
                st.revision,
                st.keys,
                dir.display()
            );
            Ok(())
        }
    }
}

fn print_status(st: &kvd::snapshot::Status, write_out: &str) {
    if write_out == "json" {
        println!("{}", serde_json::to_string(st).unwrap_or_default());
        return;
    }
    let row =
        [st.hash.clone(), st.revision.to_string(), st.keys.to_string(), st.revisions.to_string(), st.size.to_string()];
    let head = ["HASH", "REVISION", "TOTAL KEYS", "REVISIONS", "TOTAL SIZE"];
    let w: Vec<usize> = head.iter().zip(&row).map(|(h, r)| h.len().max(r.len())).collect();
    let line = format!("+{}+", w.iter().map(|n| "-".repeat(n + 2)).collect::<Vec<_>>().join("+"));
    let fmt = |cells: &[String]| {
        format!("|{}|", cells.iter().zip(&w).map(|(c, n)| format!(" {c:>n$} ")).collect::<Vec<_>>().join("|"))
    };
    println!("{line}\n{}\n{line}\n{}\n{line}", fmt(&head.map(String::from)), fmt(&row));
}

#[derive(Subcommand)]
enum Workload {
    /// Puts of fixed-size keys and values.
    Put(PutArgs),
}

#[derive(Args, Clone)]
struct PutArgs {
    /// Comma-separated endpoints (host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// gRPC connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients (each with one request in flight).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Keys are drawn from this many (1 = always the same key).
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Write keys in order instead of at random.
    #[arg(long)]
    sequential_keys: bool,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

fn endpoint_url(e: &str) -> String {
    if e.contains("://") { e.to_string() } else { format!("http://{e}") }
}

/// The `n`th key, as lowercase hex padded with zeros to `size` bytes.
fn key_for(n: u64, size: usize) -> Vec<u8> {
    let size = size.max(1);
    let s = format!("{n:0>size$x}");
    s.as_bytes()[s.len() - size..].to_vec()
}

/// A small deterministic generator for key choice (xorshift).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn bench_put(a: PutArgs) -> Result<(), String> {
    let mut channels = Vec::new();
    for i in 0..a.conns.max(1) {
        let url = endpoint_url(&a.endpoints[i % a.endpoints.len()]);
        let ch = Channel::from_shared(url.clone())
            .map_err(|e| format!("{url}: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        channels.push(ch);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; a.val_size];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients.max(1) {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let issued = issued.clone();
        let a = a.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= a.total {
                    break;
                }
                let k = if a.sequential_keys {
                    n % a.key_space_size.max(1)
                } else {
                    next_rand(&mut rng) % a.key_space_size.max(1)
                };
                let req = PutRequest { key: key_for(k, a.key_size), value: value.clone(), ..Default::default() };
                let t = Instant::now();
                match kv.put(req).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(s) => *errors.entry(format!("{:?}: {}", s.code(), s.message())).or_default() += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let took = start.elapsed();
    lat.sort();
    let pct = |p: f64| -> Duration {
        if lat.is_empty() {
            return Duration::ZERO;
        }
        lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]
    };
    let rps = lat.len() as f64 / took.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if a.json {
        let v = serde_json::json!({
            "workload": "put", "clients": a.clients, "conns": a.conns, "total": a.total,
            "ok": lat.len(), "seconds": took.as_secs_f64(), "requests_per_second": rps,
            "p50_ms": ms(pct(0.5)), "p90_ms": ms(pct(0.9)), "p99_ms": ms(pct(0.99)),
            "p999_ms": ms(pct(0.999)), "max_ms": ms(lat.last().copied().unwrap_or_default()),
            "errors": errors,
        });
        println!("{v}");
    } else {
        println!("Summary:");
        println!("  Total:\t{:.4} secs.", took.as_secs_f64());
        println!("  Requests/sec:\t{rps:.1}");
        println!(
            "  Latency p50/p90/p99/p99.9/max (ms): {:.3} / {:.3} / {:.3} / {:.3} / {:.3}",
            ms(pct(0.5)),
            ms(pct(0.9)),
            ms(pct(0.99)),
            ms(pct(0.999)),
            ms(lat.last().copied().unwrap_or_default())
        );
        for (e, n) in &errors {
            println!("  error {e}: {n}");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Bench { workload: Workload::Put(a) } => bench_put(a).await,
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
