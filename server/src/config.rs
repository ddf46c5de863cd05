//! Command-line flags: etcd's names and defaults, each also settable through
//! a `KVD_*` environment variable.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::etcdserver::ServerConfig;

#[derive(Debug, Clone, Parser)]
#[command(name = "kvd", version = crate::VERSION, about = "kvd: an etcd-compatible, Raft-replicated key-value store")]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "KVD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: `<name>.kvd`).
    #[arg(long, env = "KVD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic.
    #[arg(long, env = "KVD_LISTEN_CLIENT_URLS", default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,
    /// Client URLs advertised to the rest of the cluster.
    #[arg(long, env = "KVD_ADVERTISE_CLIENT_URLS", default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic.
    #[arg(long, env = "KVD_LISTEN_PEER_URLS", default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs advertised to the rest of the cluster.
    #[arg(
        long,
        env = "KVD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration: `name=peerURL,...` (default: this member alone).
    #[arg(long, env = "KVD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    #[arg(long, env = "KVD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Restart this member as the only member of its cluster, keeping its
    /// data: recovery after the loss of quorum. Add the others back as new
    /// members afterwards, and start without this flag from then on.
    #[arg(long, env = "KVD_FORCE_NEW_CLUSTER", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// `NAME/TOKEN`: act as --force-new-cluster if NAME is this member's
    /// --name and this data dir has not acted on TOKEN yet (then record it
    /// there), so that a value left set for a restarting pod cannot reset a
    /// cluster that has grown back. Empty = off. For operators that set one
    /// value for every member.
    #[arg(long, env = "KVD_FORCE_NEW_CLUSTER_MEMBER", default_value = "")]
    pub force_new_cluster_member: String,
    /// Token that makes cluster and member ids unique per cluster.
    #[arg(long, env = "KVD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Backend size quota in bytes (0 = 2 GiB default, negative = off).
    #[arg(long, env = "KVD_QUOTA_BACKEND_BYTES", default_value_t = 0, allow_hyphen_values = true)]
    pub quota_backend_bytes: i64,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "KVD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Most operations in one txn.
    #[arg(long, env = "KVD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Most streams one client connection may have open at once (etcd's
    /// default, unlimited: kube-apiserver keeps many watches on one).
    #[arg(long, env = "KVD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "KVD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds.
    #[arg(long, env = "KVD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Committed entries between raft snapshots.
    #[arg(long, env = "KVD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Entries kept behind a raft snapshot for slow followers to catch up.
    #[arg(long, env = "KVD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES", default_value_t = 5000)]
    pub experimental_snapshot_catchup_entries: u64,
    /// periodic (keep --auto-compaction-retention of history) or revision
    /// (keep that many revisions).
    #[arg(long, env = "KVD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Periodic: hours ("1") or a duration ("30m"); revision: a count. 0 = off.
    #[arg(long, env = "KVD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Rows a physical compaction examines per step, each step a backend
    /// transaction of its own (0 = the default).
    #[arg(
        long,
        visible_alias = "experimental-compaction-batch-limit",
        env = "KVD_COMPACTION_BATCH_LIMIT",
        default_value_t = crate::mvcc::CompactionPacing::DEFAULT_BATCH
    )]
    pub compaction_batch_limit: usize,
    /// Pause after each step of a physical compaction. etcd's default is
    /// 10ms, because its step holds up every write; a kvd step holds up
    /// none, and does not pause unless told to.
    #[arg(
        long,
        visible_alias = "experimental-compaction-sleep-interval",
        env = "KVD_COMPACTION_SLEEP_INTERVAL",
        default_value = "0s",
        value_parser = humantime::parse_duration
    )]
    pub compaction_sleep_interval: Duration,
    /// Certificate of the client listener (PEM).
    #[arg(long, env = "KVD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Key of the client listener's certificate (PEM).
    #[arg(long, env = "KVD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA that client certificates must be signed by.
    #[arg(long, env = "KVD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file; with auth
    /// enabled, a certificate's common name is the user.
    #[arg(long, env = "KVD_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Certificate of the peer listener, also presented to other members.
    #[arg(long, env = "KVD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Key of the peer certificate.
    #[arg(long, env = "KVD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA that peer certificates are signed by.
    #[arg(long, env = "KVD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present certificates signed by --peer-trusted-ca-file.
    #[arg(long, env = "KVD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Seconds an unused simple auth token stays valid.
    #[arg(long, env = "KVD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt's cost for hashing passwords (4 to 31, as etcd's).
    #[arg(long, env = "KVD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// How often watchers that asked for progress notifications get one.
    #[arg(long, env = "KVD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Additional URLs serving /metrics and the health endpoints.
    #[arg(long, env = "KVD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// debug, info, warn or error.
    #[arg(long, env = "KVD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Longest time before a batch of applied writes is committed to the backend.
    #[arg(long, env = "KVD_BACKEND_BATCH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub backend_batch_interval: Duration,
    /// Most pending operations before the backend commits.
    #[arg(long, env = "KVD_BACKEND_BATCH_LIMIT", default_value_t = 10_000)]
    pub backend_batch_limit: usize,
    /// Bytes of backend pages cached in memory (the rest is read through the
    /// operating system's page cache, which does not count as kvd's RSS).
    /// 16 MiB: 64 MiB held about 75 MB more RSS under put load and 130 MB
    /// more under random reads of a 560 MB backend, for no more throughput
    /// (BENCHMARKS.md, session 13).
    #[arg(long, env = "KVD_BACKEND_CACHE_SIZE", default_value_t = 16 << 20)]
    pub backend_cache_size: usize,
    /// How long the WAL writer polls for work before it sleeps, while work
    /// comes that soon (0s: never; at most 10ms). Polling spends CPU to
    /// spare the next write the wake of a sleeping thread: puts at one
    /// client ~20% faster (BENCHMARKS.md, session 14).
    #[arg(long, env = "KVD_WAL_POLL", default_value = "200us", value_parser = humantime::parse_duration)]
    pub wal_poll: Duration,
    /// Export spans over OTLP.
    #[arg(long, env = "KVD_EXPERIMENTAL_ENABLE_DISTRIBUTED_TRACING", default_value_t = false)]
    pub experimental_enable_distributed_tracing: bool,
    /// OTLP gRPC collector address.
    #[arg(long, env = "KVD_EXPERIMENTAL_DISTRIBUTED_TRACING_ADDRESS", default_value = "localhost:4317")]
    pub experimental_distributed_tracing_address: String,
    /// Service name on exported spans.
    #[arg(long, env = "KVD_EXPERIMENTAL_DISTRIBUTED_TRACING_SERVICE_NAME", default_value = "kvd")]
    pub experimental_distributed_tracing_service_name: String,
    /// Instance id on exported spans (default: the member name).
    #[arg(long, env = "KVD_EXPERIMENTAL_DISTRIBUTED_TRACING_INSTANCE_ID")]
    pub experimental_distributed_tracing_instance_id: Option<String>,
    /// Fraction of requests traced, per million.
    #[arg(long, env = "KVD_EXPERIMENTAL_DISTRIBUTED_TRACING_SAMPLING_RATE", default_value_t = 0)]
    pub experimental_distributed_tracing_sampling_rate: u32,
}

/// A flag value that cannot be used, with the flag's name.
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag}: {msg}")]
pub struct FlagError {
    pub flag: &'static str,
    pub msg: String,
}

/// The longest `--wal-poll`: beyond it the writer would mostly burn a CPU.
const MAX_WAL_POLL: Duration = Duration::from_millis(10);

fn ferr(flag: &'static str, msg: impl Into<String>) -> FlagError {
    FlagError { flag, msg: msg.into() }
}

/// Resolves an `http://host:port` URL into socket addresses to listen on.
/// Listen addresses of a URL flag; true marks https (TLS) listeners.
pub fn listen_addrs(flag: &'static str, urls: &[String]) -> Result<Vec<(SocketAddr, bool)>, FlagError> {
    let mut out = Vec::new();
    for u in urls.iter().filter(|u| !u.is_empty()) {
        let parsed = url::Url::parse(u).map_err(|e| ferr(flag, format!("{u}: {e}")))?;
        let tls = match parsed.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(ferr(flag, format!("{u}: unknown scheme {other:?} (http or https)"))),
        };
        let host = parsed.host_str().ok_or_else(|| ferr(flag, format!("{u}: no host")))?;
        let port = parsed.port().ok_or_else(|| ferr(flag, format!("{u}: no port")))?;
        let addrs = (host, port).to_socket_addrs().map_err(|e| ferr(flag, format!("{u}: {e}")))?;
        out.extend(addrs.take(1).map(|a| (a, tls)));
    }
    Ok(out)
}

/// Parses `--initial-cluster`: `name=peerURL,name=peerURL,...`.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<String, Vec<String>>, FlagError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (name, url) =
            part.split_once('=').ok_or_else(|| ferr("initial-cluster", format!("{part:?} is not name=url")))?;
        url::Url::parse(url).map_err(|e| ferr("initial-cluster", format!("{url}: {e}")))?;
        out.entry(name.to_string()).or_default().push(url.to_string());
    }
    Ok(out)
}

impl Flags {
    fn tls(
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        ca: &Option<PathBuf>,
        auth: bool,
        flag: &'static str,
    ) -> Result<Option<crate::tls::TlsFiles>, FlagError> {
        match (cert, key) {
            (Some(c), Some(k)) => Ok(Some(crate::tls::TlsFiles {
                cert: c.clone(),
                key: k.clone(),
                trusted_ca: ca.clone(),
                client_cert_auth: auth,
            })),
            (None, None) if !auth => Ok(None),
            (None, None) => Err(ferr(flag, "client certificate auth needs a certificate and key".to_string())),
            _ => Err(ferr(flag, "a certificate needs both --*cert-file and --*key-file".to_string())),
        }
    }

    /// The client listener's TLS files, if configured.
    pub fn client_tls(&self) -> Result<Option<crate::tls::TlsFiles>, FlagError> {
        Self::tls(&self.cert_file, &self.key_file, &self.trusted_ca_file, self.client_cert_auth, "cert-file")
    }

    /// The peer listener's (and peer clients') TLS files, if configured.
    pub fn peer_tls(&self) -> Result<Option<crate::tls::TlsFiles>, FlagError> {
        Self::tls(
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
            "peer-cert-file",
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.kvd", self.name)))
    }

    /// Checks the flags and builds the server configuration.
    pub fn server_config(&self) -> Result<ServerConfig, FlagError> {
        if self.initial_cluster_state != "new" && self.initial_cluster_state != "existing" {
            return Err(ferr(
                "initial-cluster-state",
                format!("{:?} is neither new nor existing", self.initial_cluster_state),
            ));
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ferr("election-timeout", "must be at least 5 times --heartbeat-interval"));
        }
        if self.max_txn_ops == 0 {
            return Err(ferr("max-txn-ops", "must be positive"));
        }
        if self.wal_poll > MAX_WAL_POLL {
            return Err(ferr("wal-poll", "must be at most 10ms (the WAL writer holds a CPU while it polls)"));
        }
        let spec = self.initial_cluster.clone().unwrap_or_else(|| {
            self.initial_advertise_peer_urls.iter().map(|u| format!("{}={u}", self.name)).collect::<Vec<_>>().join(",")
        });
        let initial_cluster = parse_initial_cluster(&spec)?;
        if !initial_cluster.contains_key(&self.name) {
            return Err(ferr("initial-cluster", format!("does not contain this member's name {:?}", self.name)));
        }
        let me = &initial_cluster[&self.name];
        if !self.initial_advertise_peer_urls.iter().all(|u| me.contains(u)) {
            return Err(ferr(
                "initial-cluster",
                format!(
                    "the entry for {:?} does not list --initial-advertise-peer-urls {:?}",
                    self.name, self.initial_advertise_peer_urls
                ),
            ));
        }
        Ok(ServerConfig {
            name: self.name.clone(),
            data_dir: self.data_dir(),
            peer_urls: self.initial_advertise_peer_urls.clone(),
            client_urls: self.advertise_client_urls.clone(),
            initial_cluster,
            initial_cluster_token: self.initial_cluster_token.clone(),
            join_existing: self.initial_cluster_state == "existing",
            force_new_cluster: self.force_new_cluster,
            force_new_cluster_token: crate::etcdserver::force::parse(&self.force_new_cluster_member)
                .map_err(|e| ferr("force-new-cluster-member", e))?
                .filter(|r| r.member == self.name)
                .map(|r| r.token),
            quota_backend_bytes: self.quota_backend_bytes,
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            max_concurrent_streams: self.max_concurrent_streams,
            heartbeat_ms: self.heartbeat_interval,
            election_timeout_ms: self.election_timeout,
            backend_batch_interval: self.backend_batch_interval,
            backend_batch_limit: self.backend_batch_limit,
            backend_cache_size: self.backend_cache_size,
            wal_poll: self.wal_poll,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.experimental_snapshot_catchup_entries,
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            auto_compaction: crate::etcdserver::AutoCompaction::parse(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )
            .map_err(|e| ferr("auto-compaction-retention", e))?,
            compaction_pacing: crate::mvcc::CompactionPacing {
                batch: match self.compaction_batch_limit {
                    0 => crate::mvcc::CompactionPacing::DEFAULT_BATCH,
                    n => n,
                },
                pause: self.compaction_sleep_interval,
            },
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl.max(1)),
            bcrypt_cost: match self.bcrypt_cost {
                c @ 4..=31 => c,
                c => return Err(ferr("bcrypt-cost", format!("{c} is not between 4 and 31"))),
            },
            client_cert_auth: self.client_cert_auth,
            peer_client_tls: match self.peer_tls()? {
                Some(f) => Some(crate::tls::client_config(&f).map_err(|e| ferr("peer-cert-file", e.to_string()))?),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_describe_one_member() {
        let f = Flags::parse_from(["kvd"]);
        let c = f.server_config().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("default.kvd"));
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.backend_batch_interval, Duration::from_millis(100));
        assert_eq!(c.wal_poll, crate::wal::DEFAULT_POLL);
        assert_eq!(listen_addrs("x", &f.listen_client_urls).unwrap()[0].0.port(), 2379);
    }

    #[test]
    fn bad_flags_are_named() {
        let f = Flags::parse_from(["kvd", "--initial-cluster-state", "old"]);
        assert_eq!(f.server_config().unwrap_err().flag, "initial-cluster-state");
        let f = Flags::parse_from(["kvd", "--wal-poll", "1s"]);
        assert_eq!(f.server_config().unwrap_err().flag, "wal-poll");
        assert!(Flags::parse_from(["kvd", "--wal-poll", "10ms"]).server_config().is_ok());
        assert!(listen_addrs("listen-client-urls", &["ftp://x:1".into()]).is_err());
        let f = Flags::parse_from(["kvd", "--force-new-cluster-member", "default"]);
        assert_eq!(f.server_config().unwrap_err().flag, "force-new-cluster-member");
    }

    #[test]
    fn compaction_pacing_takes_etcds_flags_under_both_names() {
        let pacing = |args: &[&str]| Flags::parse_from(args).server_config().unwrap().compaction_pacing;
        let default = crate::mvcc::CompactionPacing::default();
        assert_eq!(pacing(&["kvd"]), default);
        assert_eq!(default.pause, Duration::ZERO);
        let set = ["kvd", "--compaction-batch-limit", "250", "--compaction-sleep-interval", "10ms"];
        let want = crate::mvcc::CompactionPacing { batch: 250, pause: Duration::from_millis(10) };
        assert_eq!(pacing(&set), want);
        let old =
            ["kvd", "--experimental-compaction-batch-limit", "250", "--experimental-compaction-sleep-interval", "10ms"];
        assert_eq!(pacing(&old), want);
        assert_eq!(pacing(&["kvd", "--compaction-batch-limit", "0"]).batch, default.batch);
        assert!(Flags::try_parse_from(["kvd", "--compaction-sleep-interval", "soon"]).is_err());
    }

    #[test]
    fn force_new_cluster_member_applies_to_the_named_member_only() {
        let token = |args: &[&str]| Flags::parse_from(args).server_config().unwrap().force_new_cluster_token;
        assert_eq!(token(&["kvd"]), None);
        assert_eq!(token(&["kvd", "--force-new-cluster-member", ""]), None);
        assert_eq!(token(&["kvd", "--force-new-cluster-member", "default/t1"]), Some("t1".into()));
        assert_eq!(token(&["kvd", "--force-new-cluster-member", "other/t1"]), None);
    }
}
