//! A full disk: kvd's data dir on a small tmpfs this test mounts. Writes go
//! on until the disk is full; kvd must then stop with a message naming the
//! problem (as etcd does: a member that cannot write its WAL must not go on),
//! not panic and not acknowledge a write it could not keep. Once there is room
//! again, it starts with every acknowledged write.
//!
//! Needs root to mount (as CI has); the mount is removed when the test ends.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Proc;
use kvd_api::etcdserverpb::{PutRequest, RangeRequest};

/// A tmpfs of `mb` MiB mounted at a fresh directory; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mb: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn grow(&self, mb: u64) {
        let out =
            Command::new("mount").args(["-o", &format!("remount,size={mb}m")]).arg(self.dir.path()).output().unwrap();
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_kvd_cleanly_and_loses_no_acknowledged_write() {
    let disk = SmallDisk::new(96);
    let data: PathBuf = disk.path().join("d");
    // The quota is far above the disk: the disk fills first.
    let mut p = Proc::kvd(&data, &["--quota-backend-bytes", "8589934592", "--log-level", "info"]);
    p.ready().await;

    let mut acked = BTreeMap::new();
    let mut kv = p.kv().await;
    let value = vec![b'v'; 256 << 10];
    for i in 0..2000u32 {
        let key = format!("big/{i:05}").into_bytes();
        let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
        match tokio::time::timeout(Duration::from_secs(10), kv.put(put)).await {
            Ok(Ok(_)) => {
                acked.insert(key, i);
            }
            _ => break,
        }
    }
    assert!(acked.len() > 10, "the disk filled too early: {} writes", acked.len());
    assert!(acked.len() < 2000, "96 MiB took 500 MiB of writes?");
    let st = p.wait_exit(Duration::from_secs(30)).expect("kvd kept running on a full disk");
    assert!(!st.success(), "{st:?}");
    let log = p.log_text();
    assert!(log.contains("No space left on device"), "the message does not name the problem:\n{log}");
    assert!(!log.contains("panicked"), "kvd panicked:\n{log}");

    // Still full: kvd may not start, but must say why and not panic.
    p.restart();
    if let Some(st) = p.wait_exit(Duration::from_secs(10)) {
        assert!(!st.success());
        let log = p.log_text();
        assert!(log.contains("No space left on device"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }

    // Room again: every acknowledged write is there, and writes work.
    p.kill9();
    disk.grow(512);
    p.restart();
    p.ready().await;
    let r = p
        .kv()
        .await
        .range(RangeRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let have: Vec<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
    for k in acked.keys() {
        assert!(have.contains(k), "acknowledged {} lost", String::from_utf8_lossy(k));
    }
    assert!(have.len() <= acked.len() + 1, "{} keys present, {} acknowledged", have.len(), acked.len());
    p.kv()
        .await
        .put(PutRequest { key: b"after".to_vec(), value: b"room".to_vec(), ..Default::default() })
        .await
        .unwrap();
    eprintln!("full disk: {} writes acknowledged, all present after making room", acked.len());
}
