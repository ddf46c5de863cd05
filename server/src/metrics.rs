//! Prometheus metrics under etcd's names (so etcd's dashboards and alerts work),
//! plus kvd's own `kvd_*` figures. One process-wide registry.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_type: &'static str,
    pub grpc_service: String,
    pub grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcCodeLabels {
    pub grpc_type: &'static str,
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: &'static str,
}

/// etcd's peer metrics label their peer `To` / `From` (capitalised).
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToLabel {
    pub To: String,
}

#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromLabel {
    pub From: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabels {
    pub server_id: String,
    pub alarm_type: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub backend_defrag: Histogram,
    pub wal_group_commit: Histogram,
    pub apply_batch: Histogram,
    pub forward_batch: Histogram,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub is_learner: Gauge,
    pub server_id: Gauge,
    pub quota_backend_bytes: Gauge,
    pub db_total_size: Gauge,
    pub db_in_use_size: Gauge,
    pub keys_total: Gauge,
    pub watchers: Gauge,
    pub watch_streams: Gauge,
    pub slow_watchers: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub apply_lag: Gauge,
    pub leader_changes: Counter,
    pub proposals_failed: Counter,
    pub slow_apply: Counter,
    pub client_grpc_sent_bytes: Counter,
    pub client_grpc_received_bytes: Counter,
    pub grpc_started: Family<GrpcLabels, Counter>,
    pub grpc_handled: Family<GrpcCodeLabels, Counter>,
    pub grpc_handling: Family<GrpcLabels, Histogram>,
    pub alarms: Family<AlarmLabels, Gauge>,
    pub peer_sent_bytes: Family<ToLabel, Counter>,
    pub peer_received_bytes: Family<FromLabel, Counter>,
    pub peer_sent_failures: Family<ToLabel, Counter>,
    pub peer_rtt: Family<ToLabel, Histogram>,
    /// The standard process metrics (dashboards and `etcdctl check datascale` read them).
    pub process_resident_memory: Gauge,
    pub process_virtual_memory: Gauge,
    pub process_cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub process_open_fds: Gauge,
    pub process_max_fds: Gauge,
    pub process_start_time: Gauge,
}

fn latency_buckets() -> Histogram {
    // 1 ms .. ~8 s, as etcd's disk histograms.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            wal_fsync: latency_buckets(),
            backend_commit: latency_buckets(),
            backend_defrag: Histogram::new(exponential_buckets(0.1, 2.0, 13)),
            wal_group_commit: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            apply_batch: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            forward_batch: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            is_learner: Gauge::default(),
            server_id: Gauge::default(),
            quota_backend_bytes: Gauge::default(),
            db_total_size: Gauge::default(),
            db_in_use_size: Gauge::default(),
            keys_total: Gauge::default(),
            watchers: Gauge::default(),
            watch_streams: Gauge::default(),
            slow_watchers: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            apply_lag: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_failed: Counter::default(),
            slow_apply: Counter::default(),
            client_grpc_sent_bytes: Counter::default(),
            client_grpc_received_bytes: Counter::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_handling: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            alarms: Family::default(),
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            peer_sent_failures: Family::default(),
            peer_rtt: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            process_resident_memory: Gauge::default(),
            process_virtual_memory: Gauge::default(),
            process_cpu_seconds: Gauge::default(),
            process_open_fds: Gauge::default(),
            process_max_fds: Gauge::default(),
            process_start_time: Gauge::default(),
            registry: Registry::default(),
        };
        r.register("etcd_disk_wal_fsync_duration_seconds", "WAL fdatasync latency", m.wal_fsync.clone());
        r.register("etcd_disk_backend_commit_duration_seconds", "Backend commit latency", m.backend_commit.clone());
        r.register("etcd_disk_backend_defrag_duration_seconds", "Defragmentation duration", m.backend_defrag.clone());
        r.register("kvd_wal_group_commit_appends", "Appends covered by one WAL fdatasync", m.wal_group_commit.clone());
        r.register("kvd_apply_batch_entries", "Entries applied per apply batch", m.apply_batch.clone());
        r.register(
            "kvd_forward_batch_writes",
            "Writes a follower sent to the leader in one batch",
            m.forward_batch.clone(),
        );
        r.register("etcd_server_has_leader", "Whether a leader exists (1) or not (0)", m.has_leader.clone());
        r.register("etcd_server_is_leader", "Whether this member is the leader", m.is_leader.clone());
        r.register("etcd_server_is_learner", "Whether this member is a learner", m.is_learner.clone());
        r.register("etcd_server_id", "Member ID of this server", m.server_id.clone());
        r.register("etcd_server_quota_backend_bytes", "Backend quota in bytes", m.quota_backend_bytes.clone());
        r.register("etcd_mvcc_db_total_size_in_bytes", "Backend file size", m.db_total_size.clone());
        r.register("etcd_mvcc_db_total_size_in_use_in_bytes", "Backend bytes in use", m.db_in_use_size.clone());
        r.register("etcd_debugging_mvcc_keys_total", "Number of live keys", m.keys_total.clone());
        r.register("etcd_debugging_mvcc_watcher_total", "Total number of watchers", m.watchers.clone());
        r.register("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams", m.watch_streams.clone());
        r.register(
            "etcd_debugging_mvcc_slow_watcher_total",
            "Total number of unsynced slow watchers",
            m.slow_watchers.clone(),
        );
        r.register("etcd_server_proposals_pending", "Proposals waiting to be applied", m.proposals_pending.clone());
        r.register("etcd_server_proposals_committed_total", "Committed raft index", m.proposals_committed.clone());
        r.register("etcd_server_proposals_applied_total", "Applied raft index", m.proposals_applied.clone());
        r.register("kvd_server_apply_lag_entries", "Committed minus applied index", m.apply_lag.clone());
        r.register("etcd_server_leader_changes_seen", "Leader changes seen", m.leader_changes.clone());
        r.register("etcd_server_proposals_failed", "Failed proposals", m.proposals_failed.clone());
        r.register("etcd_server_slow_apply", "Applies slower than 100ms", m.slow_apply.clone());
        r.register(
            "etcd_network_client_grpc_sent_bytes",
            "Bytes sent to gRPC clients",
            m.client_grpc_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_client_grpc_received_bytes",
            "Bytes received from gRPC clients",
            m.client_grpc_received_bytes.clone(),
        );
        r.register("grpc_server_started", "RPCs started on the server", m.grpc_started.clone());
        r.register("grpc_server_handled", "RPCs completed on the server", m.grpc_handled.clone());
        r.register("grpc_server_handling_seconds", "RPC handling latency", m.grpc_handling.clone());
        r.register("etcd_debugging_server_alarms", "Active alarms", m.alarms.clone());
        r.register("etcd_network_peer_sent_bytes", "Bytes sent to peers", m.peer_sent_bytes.clone());
        r.register("etcd_network_peer_received_bytes", "Bytes received from peers", m.peer_received_bytes.clone());
        r.register("etcd_network_peer_sent_failures", "Failed sends to peers", m.peer_sent_failures.clone());
        r.register("etcd_network_peer_round_trip_time_seconds", "Round-trip time of peer RPCs", m.peer_rtt.clone());
        r.register("process_resident_memory_bytes", "Resident memory size in bytes", m.process_resident_memory.clone());
        r.register("process_virtual_memory_bytes", "Virtual memory size in bytes", m.process_virtual_memory.clone());
        r.register("process_cpu_seconds_total", "User and system CPU time in seconds", m.process_cpu_seconds.clone());
        r.register("process_open_fds", "Open file descriptors", m.process_open_fds.clone());
        r.register("process_max_fds", "Maximum open file descriptors", m.process_max_fds.clone());
        r.register("process_start_time_seconds", "Start time since the epoch in seconds", m.process_start_time.clone());
        Metrics { registry: r, ..m }
    }

    /// Reads the process metrics from /proc (Linux); left as they were elsewhere.
    pub fn refresh_process(&self) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf only reads configuration values.
        let (page, ticks) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
        let ticks = ticks.max(1) as f64;
        // Indexes in `f`: field N of proc(5) is f[N - 3].
        self.process_cpu_seconds.set((num(11) + num(12)) as f64 / ticks);
        self.process_virtual_memory.set(num(20) as i64);
        self.process_resident_memory.set(num(21) as i64 * page.max(1));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok())));
        if let Some(boot) = boot {
            self.process_start_time.set((boot as f64 + num(19) as f64 / ticks) as i64);
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(d.count() as i64);
        }
        let max = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        });
        if let Some(max) = max {
            self.process_max_fds.set(max);
        }
    }

    pub fn wal_batch_records(&self, n: usize) {
        if n > 0 {
            self.wal_group_commit.observe(n as f64);
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}
