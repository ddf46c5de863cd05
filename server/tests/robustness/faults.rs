//! The fault injector: SIGKILL and restart of a random member or of the
//! leader, and SIGSTOP/SIGCONT pauses longer than the election timeout, one
//! at a time with a few seconds of calm between them. Never more than a
//! minority is down, so the cluster stays available.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::Proc;

/// The faults one run injected, for the report.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    pub kills: usize,
    pub leader_kills: usize,
    pub pauses: usize,
    pub events: Vec<String>,
}

impl FaultLog {
    pub fn total(&self) -> usize {
        self.kills + self.leader_kills + self.pauses
    }
}

fn signal(p: &Proc, sig: i32) {
    if let Some(c) = &p.child {
        // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }
}

/// The index of the leader, if a running member names itself leader within 2 s.
async fn find_leader(members: &Arc<Mutex<Vec<Proc>>>) -> Option<usize> {
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for (i, e) in endpoints.iter().enumerate() {
            let ch = tonic::transport::Channel::from_shared(e.clone())
                .unwrap()
                .timeout(Duration::from_millis(300))
                .connect_lazy();
            let mut m = kvd_api::etcdserverpb::maintenance_client::MaintenanceClient::new(ch);
            if let Ok(st) = m.status(kvd_api::etcdserverpb::StatusRequest {}).await {
                let st = st.into_inner();
                if st.leader != 0 && Some(st.leader) == st.header.map(|h| h.member_id) {
                    return Some(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Injects faults until `until`, then leaves every member running.
pub async fn inject(members: Arc<Mutex<Vec<Proc>>>, until: Instant, start: Instant) -> FaultLog {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut log = FaultLog::default();
    let n = members.lock().unwrap().len();
    // Let the clients get going first.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    while Instant::now() < until {
        let at = start.elapsed().as_secs_f64();
        let pick = rng.random_range(0..3);
        let victim = match pick {
            0 => find_leader(&members).await.unwrap_or_else(|| rng.random_range(0..n)),
            _ => rng.random_range(0..n),
        };
        let down = Duration::from_millis(rng.random_range(600..1800));
        if pick == 2 {
            signal(&members.lock().unwrap()[victim], libc::SIGSTOP);
            log.pauses += 1;
            log.events.push(format!("{at:.1}s pause m{victim} {down:?}"));
            tokio::time::sleep(down).await;
            signal(&members.lock().unwrap()[victim], libc::SIGCONT);
        } else {
            members.lock().unwrap()[victim].kill9();
            if pick == 0 {
                log.leader_kills += 1;
            } else {
                log.kills += 1;
            }
            log.events
                .push(format!("{at:.1}s kill -9 m{victim}{} for {down:?}", if pick == 0 { " (leader)" } else { "" }));
            tokio::time::sleep(down).await;
            members.lock().unwrap()[victim].restart();
        }
        // Calm: the restarted member catches up before the next fault.
        let calm = Duration::from_millis(rng.random_range(800..2500));
        tokio::time::sleep(calm.min(until.saturating_duration_since(Instant::now()))).await;
    }
    log
}

/// Waits until every member serves linearizable reads again.
pub async fn all_ready(members: &Arc<Mutex<Vec<Proc>>>) {
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    for e in endpoints {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ch = tonic::transport::Channel::from_shared(e.clone()).unwrap().connect_lazy();
            let mut kv = kvd_api::etcdserverpb::kv_client::KvClient::new(ch);
            if kv
                .range(kvd_api::etcdserverpb::RangeRequest { key: b"ready".to_vec(), ..Default::default() })
                .await
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "{e} does not serve 30 s after the faults");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
