//! `kvctl backup` against a real S3 server (s3s-fs, built by
//! scripts/install-deps; it checks SigV4 signatures): credentials from the
//! environment, wrong ones refused with nothing stored; a backup several
//! times larger than the upload's buffers goes up in parts and comes back
//! whole, with kvctl's peak memory measured (wait4's ru_maxrss) far below
//! the snapshot's size, for the save and for the fetch.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;
use kvd_api::etcdserverpb::{PutRequest, StatusRequest};
use serde_json::Value;

const ACCESS: &str = "kvd-test";
const SECRET: &str = "kvd-test-secret";

fn s3s_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/s3s-fs")
}

/// An s3s-fs serving `root` on 127.0.0.71, with bucket `backups`.
struct S3 {
    child: std::process::Child,
    url: String,
}

impl S3 {
    fn start(root: &Path) -> S3 {
        std::fs::create_dir_all(root.join("backups")).unwrap();
        let port = common::free_port_on("127.0.0.71");
        let child = Command::new(s3s_bin())
            .args(["--host", "127.0.0.71", "--port", &port.to_string(), "--access-key", ACCESS, "--secret-key", SECRET])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (scripts/install-deps builds it into .tools/bin)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.71", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3 { child, url: format!("http://127.0.0.71:{port}") }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    ok: bool,
    json: Value,
    stderr: String,
    /// Peak resident memory of the kvctl process.
    max_rss_mib: f64,
}

/// Runs kvctl with the S3 environment (`secret` as the secret key) and
/// measures its peak RSS.
fn kvctl(s3: &S3, secret: &str, args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_ENDPOINT_URL", &s3.url)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let out = std::thread::spawn(move || {
        use std::io::Read;
        let (mut o, mut e) = (String::new(), String::new());
        let mut child = child;
        child.stdout.take().unwrap().read_to_string(&mut o).unwrap();
        child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        // The child stays unreaped: wait4 below collects it with its usage.
        std::mem::forget(child);
        (o, e)
    })
    .join()
    .unwrap();
    let mut status = 0;
    // SAFETY: plain syscall on our own child; both out-pointers are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let json = serde_json::from_str(out.0.lines().last().unwrap_or("")).unwrap_or(Value::Null);
    Run { ok, json, stderr: out.1, max_rss_mib: usage.ru_maxrss as f64 / 1024.0 }
}

/// Puts `n` values of 64 KiB that do not compress.
async fn fill(m: &Proc, n: usize) {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut kv = m.kv().await;
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(4) {
                let value: Vec<u8> = (0..65536).map(|_| rand::random::<u8>()).collect();
                let req = PutRequest { key: format!("big/{i:05}").into(), value, ..Default::default() };
                common::put_retrying(&mut kv, req).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_to_s3_in_parts_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start(&dir.path().join("s3"));
    let m = Proc::kvd_ready(&dir.path().join("m"), &[]).await;
    fill(&m, 3000).await;
    let st = m.maintenance().await.status(StatusRequest {}).await.unwrap().into_inner();
    let to = "s3://backups/kvd";

    // Wrong credentials: refused by the server, and nothing is stored.
    let save = ["backup", "save", "--endpoints", &m.endpoint, "--to", to, "--cluster", "big", "--compression", "zstd"];
    let r = kvctl(&s3, "wrong", &save);
    assert!(!r.ok && r.stderr.contains("SignatureDoesNotMatch"), "{}", r.stderr);
    let list = kvctl(&s3, SECRET, &["backup", "list", "--from", to, "--cluster", "big", "-w", "json"]);
    assert!(list.ok && list.json.is_null(), "nothing listed: {}", list.stderr);

    // 3000 x 64 KiB: about 188 MiB of snapshot through 8 MiB parts.
    let r = kvctl(&s3, SECRET, &save);
    assert!(r.ok, "{}", r.stderr);
    let size = r.json["size"].as_u64().unwrap();
    assert!(size > 180 << 20, "{}", r.json);
    assert!(size as i64 <= st.db_size, "snapshot {size} within the member's dbSize {}", st.db_size);
    let stored = dir.path().join("s3/backups").join(r.json["key"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), r.json["storedSize"].as_u64().unwrap());
    eprintln!(
        "save: {} MiB snapshot, {} MiB stored, kvctl peak RSS {:.0} MiB",
        size >> 20,
        r.json["storedSize"].as_u64().unwrap() >> 20,
        r.max_rss_mib
    );
    assert!(r.max_rss_mib < 64.0, "kvctl held {:.0} MiB for a {} MiB snapshot", r.max_rss_mib, size >> 20);

    let out = dir.path().join("fetched.snap");
    let f = kvctl(&s3, SECRET, &["backup", "fetch", "--from", to, "--cluster", "big", "--out", out.to_str().unwrap()]);
    assert!(f.ok, "{}", f.stderr);
    assert_eq!((f.json["sha256"].clone(), f.json["size"].clone()), (r.json["sha256"].clone(), r.json["size"].clone()));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    eprintln!("fetch: kvctl peak RSS {:.0} MiB", f.max_rss_mib);
    assert!(f.max_rss_mib < 64.0, "kvctl held {:.0} MiB fetching a {} MiB snapshot", f.max_rss_mib, size >> 20);
    let status = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["snapshot", "status", out.to_str().unwrap(), "-w", "json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["keys"], 3000);
}
