//! The "container runtime": a container is a local process in its own
//! session, inside its pod's network namespace and in a mount namespace of
//! its own where the pod's volumes are bind-mounted at their paths (there is
//! no image file system: the process sees the host's, plus those mounts).
//! It runs as root; `runAsUser`, capabilities, seccomp and resource limits
//! are ignored. Processes die with the agent (`PR_SET_PDEATHSIG`).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{Result, config, io};

/// A bind mount: `src` (file or directory) appears at `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one container process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub netns: PathBuf,
    pub mounts: Vec<Mount>,
    pub log: PathBuf,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| config(format!("path with NUL: {}", p.display())))
}

/// Creates the mount point of `m` on the host if missing (an empty file or
/// directory, like the one a runtime creates in an image's root).
fn ensure_mount_point(m: &Mount) -> Result<()> {
    if m.dst.exists() {
        return Ok(());
    }
    if m.src.is_dir() {
        std::fs::create_dir_all(&m.dst).map_err(io(format!("mount point {}", m.dst.display())))
    } else {
        if let Some(parent) = m.dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("mount point {}", parent.display())))?;
        }
        File::create(&m.dst).map(|_| ()).map_err(io(format!("mount point {}", m.dst.display())))
    }
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Starts the process of `l`.
pub fn spawn(l: &Launch) -> Result<Child> {
    let mut mounts = l.mounts.clone();
    // Parents before children, so a nested mount is not hidden.
    mounts.sort_by_key(|m| m.dst.components().count());
    let mut prepared = Vec::with_capacity(mounts.len());
    for m in &mounts {
        ensure_mount_point(m)?;
        prepared.push((cstr(&m.src)?, cstr(&m.dst)?, m.read_only));
    }
    let netns = File::open(&l.netns).map_err(io(format!("opening {}", l.netns.display())))?;
    let ns_fd = netns.as_raw_fd();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)
        .map_err(io(format!("opening {}", l.log.display())))?;
    let err = log.try_clone().map_err(io("duplicating the log file"))?;
    let mut cmd = Command::new(&l.program);
    cmd.args(&l.args)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&l.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    let root = c"/";
    let none = c"none";
    // SAFETY: between fork and exec only async-signal-safe system calls run,
    // on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::setns(ns_fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here propagates back to the host.
            check(libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (src, dst, ro) in &prepared {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if *ro {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                    check(libc::mount(none.as_ptr(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| crate::error::Error::Spec {
        reason: "RunContainerError",
        message: format!("starting {}: {e}", l.program.display()),
    })?;
    drop(netns);
    Ok(child)
}

/// Sends `sig` to the process group (session) led by `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a negative pid signals that process group.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// The end of a container's log: at most 80 lines and 2048 bytes, as the
/// kubelet takes for `FallbackToLogsOnError`.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// The termination message the container wrote (at most 4096 bytes).
pub fn termination_message(path: &Path) -> Option<String> {
    let mut buf = Vec::new();
    File::open(path).ok()?.take(4096).read_to_end(&mut buf).ok()?;
    let s = String::from_utf8_lossy(&buf).trim_end().to_string();
    (!s.is_empty()).then_some(s)
}
