//! Leader election through a coordination.k8s.io Lease, as client-go's
//! leaderelection package does it: one replica holds the Lease and renews it
//! every `retry` period; the others poll it and take it over once it has not
//! been renewed for `lease_duration`. Every write carries the resourceVersion
//! it was decided on, so two candidates never both win (the loser gets 409).
//! A leader that cannot renew within `renew_deadline` stops leading: the
//! caller exits, and Kubernetes restarts the pod as a candidate.
//!
//! [`decide`] is the pure part; [`Elector`] does the API calls.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// What a candidate does with the Lease as it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// It is ours: write a new renew time.
    Renew,
    /// Free or expired: take it, one more transition.
    TakeOver { transitions: i32 },
    /// Another holder renewed it recently: wait.
    Wait { holder: String },
}

/// Decides from the Lease's spec (`None`: no Lease) what `me` does at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else { return Decision::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + 1;
    if holder.is_empty() {
        return Decision::TakeOver { transitions };
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as i64);
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match renewed {
        Some(t) if t + duration > now => Decision::Wait { holder },
        _ => Decision::TakeOver { transitions },
    }
}

/// The spec `me` writes for `decision` at `now` (`old`: the Lease's spec).
pub fn next_spec(
    old: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = old.cloned().unwrap_or_default();
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(duration.as_secs().max(1) as i32);
    spec.renew_time = Some(MicroTime(now));
    match decision {
        Decision::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Decision::TakeOver { transitions } => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(*transitions);
        }
        Decision::Renew | Decision::Wait { .. } => {}
    }
    spec
}

/// Timings, client-go's defaults.
#[derive(Debug, Clone)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// A candidate for the Lease `name` in the Lease API's namespace.
pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub timing: Timing,
}

impl Elector {
    /// One attempt: reads the Lease and writes it if `decide` says so.
    /// Returns whether this candidate holds the Lease afterwards.
    pub async fn try_once(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        if let Decision::Wait { .. } = decision {
            return Ok(false);
        }
        let spec = next_spec(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &decision,
            &self.identity,
            self.timing.lease_duration,
            now,
        );
        let res = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            Some(mut lease) => {
                // Replace with the resourceVersion read above: a concurrent
                // writer makes this fail with 409 instead of both winning.
                lease.spec = Some(spec);
                self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
            }
        };
        match res {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        let mut waiting_logged = false;
        loop {
            match self.try_once().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) if !waiting_logged => {
                    info!(lease = %self.name, "another replica leads; waiting for the lease");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, lease = %self.name, "reading the lease failed"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Gives the Lease up on a clean shutdown (no holder), so another replica
    /// takes over at its next poll instead of after the lease duration, as
    /// client-go's ReleaseOnCancel does. Best effort: errors are logged.
    pub async fn release(&self) {
        let res = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
            let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
        };
        match res.await {
            Ok(()) => info!(lease = %self.name, "released the lease"),
            Err(e) => warn!(error = %e, lease = %self.name, "releasing the lease failed"),
        }
    }

    /// Renews the Lease until a renewal has failed for `renew_deadline`;
    /// returns then (leadership is lost).
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            match self.try_once().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "the lease was taken over");
                    return;
                }
                Err(e) => warn!(error = %e, lease = %self.name, "renewing the lease failed"),
            }
            if last_ok.elapsed() > self.timing.renew_deadline {
                warn!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
