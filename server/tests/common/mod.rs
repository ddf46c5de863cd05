//! Test harness: real kvd and etcd processes on loopback ports, and clients.
#![allow(dead_code)]

pub mod netns;
pub mod watch;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kvd_api::etcdserverpb::{PutRequest, PutResponse, RangeRequest, StatusRequest};
use tonic::transport::Channel;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on `ip`, below the kernel's ephemeral range (32768 and
/// up): a port handed out by binding port 0 can be taken again by any
/// outgoing connection before the server under test binds it. Ports are
/// taken in turn from a start that differs per test process.
pub fn free_port_on(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}")
}

pub fn kvd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvd"))
}

/// A running server process (kvd or etcd) with its endpoint and data dir.
pub struct Proc {
    pub child: Option<Child>,
    pub endpoint: String,
    pub client_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    bin: PathBuf,
}

impl Proc {
    /// Spawns `bin` with `args`; the log goes next to `data_dir`.
    fn start(
        bin: PathBuf,
        endpoint: String,
        client_port: u16,
        data_dir: &Path,
        args: Vec<String>,
        envs: Vec<(String, String)>,
    ) -> Proc {
        let mut p = Proc {
            child: None,
            endpoint,
            client_port,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            args,
            envs,
            bin,
        };
        p.spawn();
        p
    }

    /// Starts kvd with `extra` flags on fresh ports, data in `data_dir`.
    pub fn kvd(data_dir: &Path, extra: &[&str]) -> Proc {
        Self::kvd_with_env(data_dir, extra, &[])
    }

    /// Starts kvd as [`kvd`](Self::kvd) does and waits until it serves.
    pub async fn kvd_ready(data_dir: &Path, extra: &[&str]) -> Proc {
        let p = Self::kvd(data_dir, extra);
        p.ready().await;
        p
    }

    /// A cluster member: client URL on a fresh port of `ip`, peer URL `peer`,
    /// bootstrapping from `initial_cluster`.
    pub fn member(data_dir: &Path, ip: &str, name: &str, peer: &str, initial_cluster: &str, extra: &[&str]) -> Proc {
        Self::member_with_env(data_dir, ip, name, peer, initial_cluster, extra, &[])
    }

    /// [`member`](Self::member) with extra environment variables.
    pub fn member_with_env(
        data_dir: &Path,
        ip: &str,
        name: &str,
        peer: &str,
        initial_cluster: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        let cp = free_port_on(ip);
        let client = format!("http://{ip}:{cp}");
        let args = member_args(data_dir, name, &client, peer, initial_cluster, extra);
        let envs = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Proc::start(kvd_bin(), client, cp, data_dir, args, envs)
    }

    /// A cluster member inside network namespace `ns` (common/netns.rs),
    /// serving clients on `ip`:2379 and peers on `ip`:2380.
    pub fn member_in_ns(
        ns: &str,
        data_dir: &Path,
        ip: &str,
        name: &str,
        initial_cluster: &str,
        extra: &[&str],
    ) -> Proc {
        Self::member_in_ns_as(ns, data_dir, ip, name, &format!("http://{ip}:2380"), initial_cluster, extra)
    }

    /// [`member_in_ns`](Self::member_in_ns), advertising `peer_url` (a host
    /// name, say) to its peers instead of `ip`.
    pub fn member_in_ns_as(
        ns: &str,
        data_dir: &Path,
        ip: &str,
        name: &str,
        peer_url: &str,
        initial_cluster: &str,
        extra: &[&str],
    ) -> Proc {
        let client = format!("http://{ip}:2379");
        let mut args = vec!["netns".to_string(), "exec".into(), ns.into(), kvd_bin().display().to_string()];
        args.extend(member_args(data_dir, name, &client, &format!("http://{ip}:2380"), initial_cluster, extra));
        if let Some(i) = args.iter().position(|a| a == "--initial-advertise-peer-urls") {
            args[i + 1] = peer_url.to_string();
        }
        // `ip netns exec` execs kvd in place, so signals reach kvd itself.
        Proc::start(PathBuf::from("ip"), client, 2379, data_dir, args, Vec::new())
    }

    /// The value `flag` is started with, if it is given.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1).map(String::as_str)
    }

    /// Sets (or with `None` removes) an environment variable for the next start.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.envs.push((name.to_string(), v.to_string()));
        }
    }

    /// Sets `flag`'s value for the next start, adding the flag if missing.
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_string(),
            _ => self.args.extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Like [`kvd`](Self::kvd), with extra environment variables.
    pub fn kvd_with_env(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let cp = free_port();
        let pp = free_port();
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{cp}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{cp}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{pp}"),
            "--initial-advertise-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::start(
            kvd_bin(),
            format!("http://127.0.0.1:{cp}"),
            cp,
            data_dir,
            args,
            envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        )
    }

    /// Like [`kvd`](Self::kvd), run under `prlimit` with at most `files`
    /// open file descriptors.
    pub fn kvd_with_fd_limit(data_dir: &Path, files: u32) -> Proc {
        let mut p = Self::kvd_with_env(data_dir, &[], &[]);
        p.kill9();
        p.args.insert(0, kvd_bin().display().to_string());
        p.args.insert(0, format!("--nofile={files}:{files}"));
        p.bin = PathBuf::from("prlimit");
        p.spawn();
        p
    }

    /// Starts the real etcd from Debian on fresh ports.
    pub fn etcd(data_dir: &Path, extra: &[&str]) -> Proc {
        Proc::etcd_with(Path::new("etcd"), data_dir, extra)
    }

    /// Starts the etcd binary `bin` (Debian's, or [`etcd36_bin`]) on fresh ports.
    pub fn etcd_with(bin: &Path, data_dir: &Path, extra: &[&str]) -> Proc {
        let cp = free_port();
        let pp = free_port();
        let mut args: Vec<String> = [
            "--name",
            "etcd0",
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{cp}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{cp}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{pp}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{pp}"),
            "--initial-cluster",
            &format!("etcd0=http://127.0.0.1:{pp}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::start(bin.to_path_buf(), format!("http://127.0.0.1:{cp}"), cp, data_dir, args, Vec::new())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // Quiet by default; a test that passes --log-level gets that level.
        let mut cmd = Command::new(&self.bin);
        if self.args.iter().any(|a| a == "--log-level") {
            cmd.env_remove("RUST_LOG");
        } else {
            cmd.env("RUST_LOG", "warn");
        }
        let child = cmd
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the running process.
    pub fn signal(&self, signal: i32) {
        let c = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, signal);
        }
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().ok()
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits until the process has exited; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// GET /metrics on the client port.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        let ch = Channel::from_shared(self.endpoint.clone()).unwrap().connect_lazy();
        KvClient::new(ch).max_decoding_message_size(usize::MAX)
    }

    pub async fn lease(&self) -> kvd_api::etcdserverpb::lease_client::LeaseClient<Channel> {
        kvd_api::etcdserverpb::lease_client::LeaseClient::new(
            Channel::from_shared(self.endpoint.clone()).unwrap().connect_lazy(),
        )
    }

    pub async fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(Channel::from_shared(self.endpoint.clone()).unwrap().connect_lazy())
    }

    pub fn cluster(&self) -> kvd_api::etcdserverpb::cluster_client::ClusterClient<Channel> {
        kvd_api::etcdserverpb::cluster_client::ClusterClient::new(
            Channel::from_shared(self.endpoint.clone()).unwrap().connect_lazy(),
        )
    }

    /// Waits until a serializable read succeeds (a learner serves only those).
    pub async fn ready_serializable(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = Channel::from_shared(self.endpoint.clone()).unwrap().connect().await {
                let req = RangeRequest { key: b"ready".to_vec(), serializable: true, ..Default::default() };
                if KvClient::new(ch).range(req).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} not serving after 30s; log:\n{}", self.endpoint, self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this member's (serializable) member list shows `n`
    /// members, each with a client URL.
    pub async fn lists_published(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = kvd_api::etcdserverpb::MemberListRequest { linearizable: false };
            if let Ok(r) = self.cluster().member_list(req).await {
                let members = r.into_inner().members;
                if members.len() == n && members.iter().all(|m| !m.client_ur_ls.is_empty()) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{}: not every member published after 30s", self.endpoint);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a linearizable read succeeds.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = Channel::from_shared(self.endpoint.clone()).unwrap().connect().await {
                let mut kv = KvClient::new(ch.clone());
                let mut m = MaintenanceClient::new(ch);
                if kv.range(RangeRequest { key: b"ready".to_vec(), ..Default::default() }).await.is_ok()
                    && m.status(StatusRequest {}).await.is_ok()
                {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("{} not ready after 30s; log:\n{}", self.endpoint, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A kvd and the real etcd side by side, both serving, started with the same
/// extra flags, for differential tests (data under `dir`/kvd and `dir`/etcd).
pub async fn kvd_and_etcd(dir: &Path, flags: &[&str]) -> (Proc, Proc) {
    let kvd = Proc::kvd(&dir.join("kvd"), flags);
    let etcd = Proc::etcd(&dir.join("etcd"), flags);
    kvd.ready().await;
    etcd.ready().await;
    (kvd, etcd)
}

/// The etcdctl that scripts/install-deps builds from its pinned Go module
/// (`KVD_ETCDCTL` overrides it).
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("KVD_ETCDCTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/etcdctl"))
}

/// Debian's etcdctl (etcd-client, 3.4), which scripts/install-deps
/// installs: its clientv3 sends an endpoint's URL as is (`http://host:port`)
/// as the `:authority` of each request.
pub fn debian_etcdctl_bin() -> PathBuf {
    PathBuf::from("/usr/bin/etcdctl")
}

/// The etcd server (3.6) that scripts/install-deps builds from its pinned
/// Go module.
pub fn etcd36_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/etcd")
}

/// Runs etcdctl against `endpoint` (or a comma-separated list) and returns
/// (success, stdout, stderr).
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(etcdctl_bin());
    cmd.arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("etcdctl is built into .tools/bin by scripts/install-deps");
    if let Some(input) = stdin {
        child.stdin.as_mut().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// kvd's flags for a cluster member with the test's short timeouts.
fn member_args(
    data_dir: &Path,
    name: &str,
    client: &str,
    peer: &str,
    initial_cluster: &str,
    extra: &[&str],
) -> Vec<String> {
    [
        "--name",
        name,
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        initial_cluster,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// A cluster of one member per namespace of `net`, named m0, m1, ...
pub fn cluster_in(net: &netns::Net, dir: &Path, extra: &[&str]) -> Vec<Proc> {
    let ic = (0..net.len()).map(|i| format!("m{i}=http://{}:2380", net.addr(i))).collect::<Vec<_>>().join(",");
    (0..net.len())
        .map(|i| Proc::member_in_ns(&net.ns(i), &dir.join(format!("m{i}")), &net.addr(i), &format!("m{i}"), &ic, extra))
        .collect()
}

/// A cluster of `n` members on 127.0.0.(base+i), fresh ports.
pub fn cluster(dir: &std::path::Path, n: usize, base: u8) -> Vec<Proc> {
    cluster_with(dir, n, base, &[])
}

/// [`cluster`] with extra flags for every member.
pub fn cluster_with(dir: &std::path::Path, n: usize, base: u8, extra: &[&str]) -> Vec<Proc> {
    cluster_with_env(dir, n, base, extra, |_| Vec::new())
}

/// [`cluster_with`], member `i` started with the environment `env(i)`.
pub fn cluster_with_env(
    dir: &std::path::Path,
    n: usize,
    base: u8,
    extra: &[&str],
    env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
) -> Vec<Proc> {
    let peers: Vec<(String, String)> = (0..n)
        .map(|i| {
            let ip = format!("127.0.0.{}", base as usize + i);
            (format!("m{i}"), format!("http://{ip}:{}", free_port_on(&ip)))
        })
        .collect();
    let ic = peers.iter().map(|(n, u)| format!("{n}={u}")).collect::<Vec<_>>().join(",");
    (0..n)
        .map(|i| {
            let ip = format!("127.0.0.{}", base as usize + i);
            Proc::member_with_env(&dir.join(&peers[i].0), &ip, &peers[i].0, &peers[i].1, &ic, extra, &env(i))
        })
        .collect()
}

/// [`cluster_with`], returned once every member answers a linearizable read
/// and lists all `n` with their client URLs (every member's publish applied
/// everywhere, as a pod is Ready only after its own).
pub async fn ready_cluster(dir: &std::path::Path, n: usize, base: u8, extra: &[&str]) -> Vec<Proc> {
    let members = cluster_with(dir, n, base, extra);
    for m in &members {
        m.ready().await;
    }
    for m in &members {
        m.lists_published(n).await;
    }
    members
}

pub async fn leader(members: &[Proc]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, m) in members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            if let Ok(st) = m.maintenance().await.status(StatusRequest {}).await {
                let st = st.into_inner();
                if st.leader != 0 && st.leader == st.header.unwrap().member_id {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every member's HashKV at `rev`, once each has applied it.
pub async fn hashes_at(endpoints: &[String], rev: i64) -> Vec<u32> {
    let mut out = Vec::new();
    for e in endpoints {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut m = MaintenanceClient::new(Channel::from_shared(e.clone()).unwrap().connect_lazy());
            match m.hash_kv(kvd_api::etcdserverpb::HashKvRequest { revision: rev }).await {
                Ok(r) => {
                    out.push(r.into_inner().hash);
                    break;
                }
                Err(s) => assert!(Instant::now() < deadline, "{e}: HashKV at {rev}: {s}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// A Put that rides out an election: a busy machine can starve a leader of
/// its heartbeats, and a put then fails with Unavailable ("leader changed",
/// "no leader"), which an etcd client retries. Panics on any other error, or
/// after 20 s.
pub async fn put_retrying(kv: &mut KvClient<Channel>, req: PutRequest) -> PutResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match kv.put(req.clone()).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("put {:?}: {s}", String::from_utf8_lossy(&req.key)),
        }
    }
}

/// The value of the first sample of `name` (a metric name, or a prefix of
/// a sample line such as `name{label="x"}`) in a /metrics text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("not a sample: {line}"))
}
