//! Pure building of a pod's status from what the agent knows of its
//! containers: the phase (kubelet's rules), the four conditions, and the
//! container statuses (waiting, running, terminated, last state, restarts,
//! readiness).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// How a container ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    pub started: Timestamp,
    pub finished: Timestamp,
}

/// A container's current state.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started: Timestamp },
    Terminated(Term),
}

/// What the status needs of one container.
#[derive(Clone, Debug)]
pub struct View {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last: Option<Term>,
    pub restarts: i32,
    pub ready: bool,
    pub started: bool,
}

/// The pod phase by kubelet's rules (`getPhase`): a container that never
/// ran keeps the pod Pending; one running makes it Running; when all have
/// stopped, Always (and OnFailure after a failure) means Running again,
/// otherwise Succeeded if all exited 0, else Failed.
pub fn phase(views: &[View], restart_policy: &str) -> &'static str {
    let (mut pending, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for v in views {
        match &v.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => match &v.last {
                Some(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                None => pending += 1,
            },
        }
    }
    if pending > 0 || views.is_empty() {
        "Pending"
    } else if running > 0 || restart_policy == "Always" {
        "Running"
    } else if stopped == succeeded {
        "Succeeded"
    } else if restart_policy == "OnFailure" {
        "Running"
    } else {
        "Failed"
    }
}

fn term(t: &Term) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started)),
        finished_at: Some(Time(t.finished)),
        ..Default::default()
    }
}

fn container_status(v: &View) -> ContainerStatus {
    let state = match &v.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.clone() }),
            ..Default::default()
        },
        State::Running { started } => ContainerState {
            running: Some(ContainerStateRunning { started_at: Some(Time(*started)) }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState { terminated: Some(term(t)), ..Default::default() },
    };
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: format!("kvd-node-agent://{}", v.image),
        container_id: Some(format!("kvd-node-agent://{}", v.name)),
        state: Some(state),
        last_state: v.last.as_ref().map(|t| ContainerState { terminated: Some(term(t)), ..Default::default() }),
        ready: v.ready && matches!(v.state, State::Running { .. }),
        restart_count: v.restarts,
        started: Some(v.started && matches!(v.state, State::Running { .. })),
        ..Default::default()
    }
}

fn condition(prev: Option<&PodStatus>, type_: &str, ok: bool, now: Timestamp) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let old = prev.and_then(|p| p.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let since = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => None,
    };
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(since.unwrap_or(Time(now))),
        ..Default::default()
    }
}

/// Where the pod runs.
pub struct Placement<'a> {
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
    pub start_time: Timestamp,
}

/// The whole status the agent reports; `prev` keeps condition transition
/// times stable.
pub fn pod_status(
    views: &[View],
    restart_policy: &str,
    at: &Placement,
    prev: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let phase = phase(views, restart_policy);
    let done = matches!(phase, "Succeeded" | "Failed");
    let ready = !done && !views.is_empty() && views.iter().all(|v| v.ready && matches!(v.state, State::Running { .. }));
    PodStatus {
        phase: Some(phase.into()),
        host_ip: Some(at.host_ip.into()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP { ip: at.host_ip.into() }]),
        pod_ip: at.pod_ip.map(str::to_string),
        pod_ips: at.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(at.start_time)),
        conditions: Some(vec![
            condition(prev, "PodScheduled", true, now),
            condition(prev, "Initialized", true, now),
            condition(prev, "ContainersReady", ready, now),
            condition(prev, "Ready", ready, now),
        ]),
        container_statuses: Some(views.iter().map(container_status).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: State, last: Option<Term>) -> View {
        View { name: "c".into(), image: "i".into(), state, last, restarts: 0, ready: true, started: true }
    }

    fn t(code: i32) -> Term {
        Term {
            exit_code: code,
            reason: "Completed".into(),
            message: None,
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
        }
    }

    fn waiting() -> State {
        State::Waiting { reason: "ContainerCreating".into(), message: None }
    }

    #[test]
    fn phases() {
        let run = State::Running { started: Timestamp::UNIX_EPOCH };
        assert_eq!(phase(&[view(waiting(), None)], "Always"), "Pending");
        assert_eq!(phase(&[view(run.clone(), None)], "Never"), "Running");
        assert_eq!(phase(&[view(State::Terminated(t(0)), None)], "Never"), "Succeeded");
        assert_eq!(phase(&[view(State::Terminated(t(1)), None)], "Never"), "Failed");
        assert_eq!(phase(&[view(State::Terminated(t(1)), None)], "OnFailure"), "Running");
        assert_eq!(phase(&[view(waiting(), Some(t(2)))], "Always"), "Running");
        assert_eq!(phase(&[view(State::Terminated(t(0)), None), view(run, None)], "Never"), "Running");
    }

    #[test]
    fn status_reports_readiness_and_keeps_transition_times() {
        let now = Timestamp::from_second(1000).expect("ts");
        let at = Placement { pod_ip: Some("10.244.0.2"), host_ip: "10.244.0.1", start_time: now };
        let mut v = view(State::Running { started: now }, Some(t(137)));
        v.ready = false;
        v.restarts = 2;
        let s1 = pod_status(&[v.clone()], "Always", &at, None, now);
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        assert_eq!(s1.pod_ips.as_ref().map(|p| p[0].ip.as_str()), Some("10.244.0.2"));
        let ready = |s: &PodStatus| s.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "Ready")).cloned();
        assert_eq!(ready(&s1).map(|c| c.status), Some("False".into()));
        let cs = &s1.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!((cs.restart_count, cs.ready), (2, false));
        assert_eq!(cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(137));
        v.ready = true;
        let later = Timestamp::from_second(2000).expect("ts");
        let s2 = pod_status(&[v.clone()], "Always", &at, Some(&s1), later);
        assert_eq!(ready(&s2).and_then(|c| c.last_transition_time).map(|t| t.0), Some(later));
        let sched =
            |s: &PodStatus| s.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled")).cloned();
        assert_eq!(sched(&s2).and_then(|c| c.last_transition_time).map(|t| t.0), Some(now));
        let s3 = pod_status(&[v], "Always", &at, Some(&s2), Timestamp::from_second(3000).expect("ts"));
        assert_eq!(ready(&s3).and_then(|c| c.last_transition_time).map(|t| t.0), Some(later));
    }
}
