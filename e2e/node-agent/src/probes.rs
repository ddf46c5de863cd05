//! Readiness, liveness and startup probes, run by the agent against the
//! pod's address: `httpGet` (HTTP only; 200-399 passes) and `tcpSocket`.
//! `exec` and `grpc` probes are not supported and always pass. Thresholds,
//! initial delay, period and timeout follow the Kubernetes defaults.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Clone, Debug)]
enum Check {
    Http { port: u16, path: String },
    Tcp { port: u16 },
    Pass,
}

/// One probe of one container, with its consecutive counts.
pub struct Prober {
    check: Check,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    next: Instant,
    successes: u32,
    failures: u32,
    /// The probe's verdict so far (None before the first threshold).
    pub verdict: Option<bool>,
    inflight: Option<JoinHandle<bool>>,
}

fn port(p: &IntOrString, c: &Container) -> u16 {
    match p {
        IntOrString::Int(i) => u16::try_from(*i).unwrap_or(0),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .unwrap_or_else(|| name.parse().unwrap_or(0)),
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

impl Prober {
    /// The prober of `p`, first run after its initial delay from `started`.
    pub fn new(p: &Probe, c: &Container, started: Instant) -> Prober {
        let check = if let Some(h) = &p.http_get {
            Check::Http { port: port(&h.port, c), path: h.path.clone().unwrap_or_else(|| "/".into()) }
        } else if let Some(t) = &p.tcp_socket {
            Check::Tcp { port: port(&t.port, c) }
        } else {
            Check::Pass
        };
        Prober {
            check,
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.and_then(|v| u32::try_from(v).ok()).unwrap_or(1).max(1),
            failure_threshold: p.failure_threshold.and_then(|v| u32::try_from(v).ok()).unwrap_or(3).max(1),
            next: started + secs(p.initial_delay_seconds, 0),
            successes: 0,
            failures: 0,
            verdict: None,
            inflight: None,
        }
    }

    /// Collects a finished check and starts the next one when it is due.
    /// Returns the verdict when it changed.
    pub async fn poll(&mut self, ip: &str) -> Option<bool> {
        let mut changed = None;
        if self.inflight.as_ref().is_some_and(|h| h.is_finished()) {
            let ok = match self.inflight.take() {
                Some(h) => h.await.unwrap_or(false),
                None => false,
            };
            if ok {
                self.successes += 1;
                self.failures = 0;
                if self.successes >= self.success_threshold && self.verdict != Some(true) {
                    self.verdict = Some(true);
                    changed = Some(true);
                }
            } else {
                self.failures += 1;
                self.successes = 0;
                if self.failures >= self.failure_threshold && self.verdict != Some(false) {
                    self.verdict = Some(false);
                    changed = Some(false);
                }
            }
        }
        let now = Instant::now();
        if self.inflight.is_none() && now >= self.next {
            self.next = now + self.period;
            let (check, ip, timeout) = (self.check.clone(), ip.to_string(), self.timeout);
            self.inflight =
                Some(tokio::spawn(async move { tokio::time::timeout(timeout, run(check, ip)).await.unwrap_or(false) }));
        }
        changed
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(h) = self.inflight.take() {
            h.abort();
        }
    }
}

async fn run(check: Check, ip: String) -> bool {
    match check {
        Check::Pass => true,
        Check::Tcp { port } => TcpStream::connect((ip.as_str(), port)).await.is_ok(),
        Check::Http { port, path } => http_get(&ip, port, &path).await.is_some_and(|code| (200..400).contains(&code)),
    }
}

/// A bare HTTP/1.1 GET (one request per connection); the status code of
/// the answer.
async fn http_get(ip: &str, port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect((ip, port)).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/kvd-node-agent\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.ok()?;
        if r == 0 || buf[..n + r].contains(&b'\n') {
            n += r;
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    status_code(&line)
}

/// The status code of an HTTP status line.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};

    #[test]
    fn parses_status_lines_and_named_ports() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("garbage"), None);
        let c = Container {
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            ..Default::default()
        };
        assert_eq!(port(&IntOrString::String("http".into()), &c), 8080);
        assert_eq!(port(&IntOrString::Int(2379), &c), 2379);
        let p = Probe {
            http_get: Some(HTTPGetAction { port: IntOrString::String("http".into()), ..Default::default() }),
            ..Default::default()
        };
        let pr = Prober::new(&p, &c, Instant::now());
        assert!(matches!(pr.check, Check::Http { port: 8080, ref path } if path == "/"));
        assert_eq!((pr.failure_threshold, pr.period), (3, Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn http_probe_against_a_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
        });
        assert_eq!(http_get("127.0.0.1", port, "/readyz").await, Some(204));
        assert!(run(Check::Http { port, path: "/x".into() }, "127.0.0.1".into()).await);
    }
}
