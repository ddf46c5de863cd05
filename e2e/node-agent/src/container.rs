//! One container's life: start, exit (termination message, or the log
//! tail with `FallbackToLogsOnError`), restarts per the pod's
//! `restartPolicy` with a back-off of 1 s doubling to 10 s (waiting reason
//! CrashLoopBackOff), its probes (a failed liveness or startup probe
//! restarts it), and stopping: SIGTERM to its process group, SIGKILL after
//! the grace period.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::Error;
use crate::probes::Prober;
use crate::runtime::{self, Launch};
use crate::status::{State, Term, View};

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A container of a running pod.
pub struct ContainerRun {
    spec: Container,
    /// What to start, or why it cannot be started.
    launch: Result<Launch, (String, String)>,
    child: Option<Child>,
    started: Option<(Timestamp, Instant)>,
    state: State,
    last: Option<Term>,
    restarts: i32,
    backoff: Duration,
    next_start: Instant,
    kill_at: Option<Instant>,
    stopping: bool,
    readiness: Option<Prober>,
    liveness: Option<Prober>,
    startup: Option<Prober>,
    termination_log: PathBuf,
}

impl ContainerRun {
    /// A container waiting for its pod's setup.
    pub fn new(spec: Container, termination_log: PathBuf) -> ContainerRun {
        ContainerRun {
            spec,
            launch: Err(("ContainerCreating".into(), String::new())),
            child: None,
            started: None,
            state: State::Waiting { reason: "ContainerCreating".into(), message: None },
            last: None,
            restarts: 0,
            backoff: Duration::from_secs(1),
            next_start: Instant::now(),
            kill_at: None,
            stopping: false,
            readiness: None,
            liveness: None,
            startup: None,
            termination_log,
        }
    }

    /// Sets what to run (or the error that keeps it waiting).
    pub fn set_launch(&mut self, launch: Result<Launch, Error>) {
        self.launch = launch.map_err(|e| match e {
            Error::Spec { reason, message } => (reason.to_string(), message),
            Error::NotReady(m) => ("ContainerCreating".to_string(), m),
            other => ("CreateContainerError".to_string(), other.to_string()),
        });
        if let (Err((reason, message)), None) = (&self.launch, &self.child) {
            self.state = State::Waiting { reason: reason.clone(), message: Some(message.clone()) };
        }
    }

    /// Whether its process runs.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it ran to completion with exit code 0 (an init container's end).
    pub fn succeeded(&self) -> bool {
        self.child.is_none() && matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    /// Whether it has finished for good (terminated, no restart coming).
    pub fn finished(&self) -> bool {
        self.child.is_none() && matches!(self.state, State::Terminated(_))
    }

    fn start(&mut self) {
        let Ok(l) = &self.launch else { return };
        let _ = std::fs::write(&self.termination_log, b"");
        match runtime::spawn(l) {
            Ok(child) => {
                info!(container = self.spec.name, pid = child.id(), program = %l.program.display(), "started");
                let now = (Timestamp::now(), Instant::now());
                self.child = Some(child);
                self.started = Some(now);
                self.state = State::Running { started: now.0 };
                self.readiness = self.spec.readiness_probe.as_ref().map(|p| Prober::new(p, &self.spec, now.1));
                self.liveness = self.spec.liveness_probe.as_ref().map(|p| Prober::new(p, &self.spec, now.1));
                self.startup = self.spec.startup_probe.as_ref().map(|p| Prober::new(p, &self.spec, now.1));
            }
            Err(e) => {
                warn!(container = self.spec.name, error = %e, "cannot start");
                self.state = State::Waiting { reason: "RunContainerError".into(), message: Some(e.to_string()) };
                self.next_start = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn exited(&mut self, code: i32, policy: &str) {
        let (started, since) = self.started.take().unwrap_or((Timestamp::now(), Instant::now()));
        let log = self.launch.as_ref().map(|l| l.log.clone()).ok();
        let fallback = self.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let message = runtime::termination_message(&self.termination_log)
            .or_else(|| (fallback && code != 0).then(|| log.map(|l| runtime::log_tail(&l))).flatten());
        let term = Term {
            exit_code: code,
            reason: if code == 0 { "Completed".into() } else { "Error".into() },
            message,
            started,
            finished: Timestamp::now(),
        };
        info!(container = self.spec.name, code, "exited");
        self.readiness = None;
        self.liveness = None;
        self.startup = None;
        self.kill_at = None;
        let restart = !self.stopping && (policy == "Always" || (policy == "OnFailure" && code != 0));
        if !restart {
            self.state = State::Terminated(term);
            return;
        }
        if since.elapsed() > Duration::from_secs(30) {
            self.backoff = Duration::from_secs(1);
        }
        self.last = Some(term);
        self.restarts += 1;
        self.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {}s restarting failed container={}",
                self.backoff.as_secs(),
                self.spec.name
            )),
        };
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Asks the process to stop: SIGTERM now, SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.stopping = true;
        if let Some(c) = &self.child {
            runtime::signal(c.id(), libc::SIGTERM);
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    fn kill_for_restart(&mut self, why: &str) {
        warn!(container = self.spec.name, why, "restarting");
        if let Some(c) = &self.child {
            runtime::signal(c.id(), libc::SIGTERM);
            self.kill_at = Some(Instant::now() + Duration::from_secs(10));
        }
    }

    /// One supervision step: exits, SIGKILL deadlines, probes, (re)starts.
    pub async fn tick(&mut self, ip: &str, policy: &str) {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                    self.child = None;
                    self.exited(code, policy);
                }
                Ok(None) => {}
                Err(e) => warn!(container = self.spec.name, error = %e, "waiting for the process"),
            }
        }
        if let (Some(c), Some(at)) = (&self.child, self.kill_at)
            && Instant::now() >= at
        {
            runtime::signal(c.id(), libc::SIGKILL);
        }
        if self.child.is_some() && self.kill_at.is_none() {
            if let Some(p) = &mut self.startup {
                match p.poll(ip).await {
                    Some(false) => return self.kill_for_restart("startup probe failed"),
                    Some(true) => self.startup = None,
                    None => return,
                }
            }
            if let Some(p) = &mut self.liveness
                && p.poll(ip).await == Some(false)
            {
                return self.kill_for_restart("liveness probe failed");
            }
            if let Some(p) = &mut self.readiness {
                p.poll(ip).await;
            }
        }
        let waiting = matches!(self.state, State::Waiting { .. });
        if self.child.is_none() && waiting && !self.stopping && Instant::now() >= self.next_start {
            self.start();
        }
    }

    /// What the pod status shows of it.
    pub fn view(&self) -> View {
        let ready = self.child.is_some()
            && self.startup.is_none()
            && self.readiness.as_ref().is_none_or(|p| p.verdict == Some(true));
        View {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            state: self.state.clone(),
            last: self.last.clone(),
            restarts: self.restarts,
            ready,
            started: self.child.is_some() && self.startup.is_none(),
        }
    }

    /// Kills the process at once and reaps it (agent shutdown).
    pub fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            runtime::signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}
