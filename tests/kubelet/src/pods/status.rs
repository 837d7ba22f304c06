//! Pod status as a kubelet reports it, built from the containers' states. Pure.

use std::net::Ipv4Addr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::address::NODE_IP;
use super::state::{ContainerView, RunState, Termination};

/// Everything the status depends on.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    pub restart_policy: &'a str,
    pub containers: &'a [ContainerView],
    /// The pod is being deleted: once its containers stop it is terminal, whatever the restart policy.
    pub deleting: bool,
    /// Volumes are in place (a kubelet's "sandbox ready").
    pub sandbox_ready: bool,
    pub start_time: Timestamp,
    pub now: Timestamp,
    /// The pod's address (see [`super::address`]); none while it is not known, as before a real pod's sandbox.
    pub pod_ip: Option<Ipv4Addr>,
    /// The conditions reported before, whose transition times are kept when their status does not change.
    pub previous: &'a [PodCondition],
}

/// The pod phase, following the kubelet's `getPhase`.
pub fn phase(restart_policy: &str, containers: &[ContainerView], deleting: bool) -> &'static str {
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            RunState::Waiting { .. } => match &c.last {
                Some(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                None => waiting += 1,
            },
        }
    }
    if waiting > 0 && !(deleting && running == 0) {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped == 0 {
        // Deleted before anything started.
        return if deleting { "Failed" } else { "Pending" };
    }
    let all_succeeded = succeeded == stopped && waiting == 0;
    if deleting {
        return if all_succeeded { "Succeeded" } else { "Failed" };
    }
    match restart_policy {
        "Never" => {
            if all_succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        }
        "OnFailure" if all_succeeded => "Succeeded",
        _ => "Running",
    }
}

/// Whether the pod will never run anything again.
pub fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed")
}

/// The pod's status.
pub fn build(input: &StatusInput<'_>) -> PodStatus {
    let phase = phase(input.restart_policy, input.containers, input.deleting);
    let terminal = is_terminal(phase);
    let unready: Vec<&str> = input
        .containers
        .iter()
        .filter(|c| !c.is_ready())
        .map(|c| c.name.as_str())
        .collect();
    let (ready, reason, message) = if terminal {
        (false, Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        condition(
            input,
            "PodReadyToStartContainers",
            input.sandbox_ready && !terminal,
            None,
            None,
        ),
        condition(
            input,
            "Initialized",
            true,
            terminal.then_some("PodCompleted"),
            None,
        ),
        condition(input, "Ready", ready, reason, message.clone()),
        condition(input, "ContainersReady", ready, reason, message),
        condition(input, "PodScheduled", true, None, None),
    ];
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(NODE_IP.to_string()),
        host_ips: Some(vec![HostIP {
            ip: NODE_IP.to_string(),
        }]),
        pod_ip: input.pod_ip.map(|ip| ip.to_string()),
        pod_ips: input.pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(input.start_time)),
        container_statuses: Some(input.containers.iter().map(container_status).collect()),
        ..PodStatus::default()
    }
}

fn condition(
    input: &StatusInput<'_>,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = input
        .previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(input.now));
    PodCondition {
        type_: type_.to_string(),
        status,
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: Some(container_id(t.pid)),
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
    }
}

/// The `containerID` of a run: the process id, which tests use to check the process.
pub fn container_id(pid: u32) -> String {
    format!("sluice://{pid}")
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    let (state, container_id, started) = match &c.state {
        RunState::Waiting { reason, message } => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            c.last.as_ref().map(|t| container_id(t.pid)),
            false,
        ),
        RunState::Running {
            pid, started_at, ..
        } => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..ContainerState::default()
            },
            Some(container_id(*pid)),
            true,
        ),
        RunState::Terminated(t) => (
            ContainerState {
                terminated: Some(terminated(t)),
                ..ContainerState::default()
            },
            Some(container_id(t.pid)),
            false,
        ),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id,
        ready: c.is_ready(),
        started: Some(started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(
            c.last
                .as_ref()
                .map(|t| ContainerState {
                    terminated: Some(terminated(t)),
                    ..ContainerState::default()
                })
                .unwrap_or_default(),
        ),
        ..ContainerStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn term(code: i32) -> Termination {
        Termination::from_exit(42, Some(code), None, ts(0), ts(1))
    }

    fn view(state: RunState, last: Option<Termination>, restarts: i32) -> ContainerView {
        ContainerView {
            state,
            last,
            restart_count: restarts,
            ..ContainerView::waiting("main", "sluice/test-shell:dev", "ContainerCreating")
        }
    }

    fn running(ready: bool) -> RunState {
        RunState::Running {
            pid: 7,
            started_at: ts(5),
            ready,
        }
    }

    fn backoff() -> RunState {
        RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some("back-off 10s".into()),
        }
    }

    fn input<'a>(
        policy: &'a str,
        containers: &'a [ContainerView],
        previous: &'a [PodCondition],
    ) -> StatusInput<'a> {
        StatusInput {
            restart_policy: policy,
            containers,
            deleting: false,
            sandbox_ready: true,
            start_time: ts(0),
            now: ts(10),
            pod_ip: Some(NODE_IP),
            previous,
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let never_started = [ContainerView::waiting("a", "i", "ContainerCreating")];
        assert_eq!(phase("Always", &never_started, false), "Pending");
        assert_eq!(
            phase("Always", &[view(running(false), None, 0)], false),
            "Running"
        );
        // Crash looping under Always stays Running.
        assert_eq!(
            phase("Always", &[view(backoff(), Some(term(1)), 2)], false),
            "Running"
        );
        assert_eq!(
            phase(
                "Never",
                &[view(RunState::Terminated(term(1)), None, 0)],
                false
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                "Never",
                &[view(RunState::Terminated(term(0)), None, 0)],
                false
            ),
            "Succeeded"
        );
        assert_eq!(
            phase(
                "OnFailure",
                &[view(RunState::Terminated(term(0)), None, 0)],
                false
            ),
            "Succeeded"
        );
        assert_eq!(
            phase("OnFailure", &[view(backoff(), Some(term(3)), 1)], false),
            "Running"
        );
        // One container still to start keeps the pod Pending.
        let mixed = [
            view(running(true), None, 0),
            ContainerView::waiting("b", "i", "ErrImagePull"),
        ];
        assert_eq!(phase("Always", &mixed, false), "Pending");
        // Deleted pods end terminal whatever the policy.
        assert_eq!(
            phase(
                "Always",
                &[view(RunState::Terminated(term(143)), None, 0)],
                true
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                "Always",
                &[view(RunState::Terminated(term(0)), None, 0)],
                true
            ),
            "Succeeded"
        );
        assert_eq!(phase("Always", &never_started, true), "Failed");
    }

    #[test]
    fn running_ready_pod_reports_like_a_kubelet() {
        let containers = [view(running(true), Some(term(1)), 3)];
        let s = build(&input("Always", &containers, &[]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(cond(&s, "Initialized").status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.restart_count, 3);
        assert_eq!(cs.container_id.as_deref(), Some("sluice://7"));
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at,
            Some(Time(ts(5)))
        );
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
    }

    #[test]
    fn the_pod_ip_is_the_one_given_and_the_host_ip_the_nodes() {
        let containers = [view(running(true), None, 0)];
        let mut annotated = input("Always", &containers, &[]);
        annotated.pod_ip = Some(Ipv4Addr::new(10, 1, 2, 3));
        let s = build(&annotated);
        assert_eq!(s.pod_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(s.pod_ips.unwrap()[0].ip, "10.1.2.3");
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.host_ips.unwrap()[0].ip, "127.0.0.1");

        annotated.pod_ip = None;
        let s = build(&annotated);
        assert_eq!((s.pod_ip, s.pod_ips), (None, None));
        assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn crash_loop_and_failure_statuses() {
        let containers = [view(backoff(), Some(term(2)), 2)];
        let s = build(&input("Always", &containers, &[]));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(cs.restart_count, 2);
        assert!(!cs.ready);
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [main]")
        );

        let containers = [view(RunState::Terminated(term(1)), None, 0)];
        let s = build(&input("Never", &containers, &[]));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let t = s.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let containers = [view(running(true), None, 0)];
        let first = build(&input("Always", &containers, &[]));
        let previous = first.conditions.clone().unwrap();
        let mut later = input("Always", &containers, &previous);
        later.now = ts(100);
        let second = build(&later);
        assert_eq!(
            cond(&second, "Ready").last_transition_time,
            Some(Time(ts(10)))
        );
        let unready = [view(running(false), None, 0)];
        let mut flipped = input("Always", &unready, &previous);
        flipped.now = ts(200);
        let third = build(&flipped);
        assert_eq!(
            cond(&third, "Ready").last_transition_time,
            Some(Time(ts(200)))
        );
        assert_eq!(
            cond(&third, "PodScheduled").last_transition_time,
            Some(Time(ts(10)))
        );
    }

    #[test]
    fn signals_become_exit_codes() {
        let t = Termination::from_exit(1, None, Some(15), ts(0), ts(1));
        assert_eq!(
            (t.exit_code, t.signal, t.reason.as_str()),
            (143, Some(15), "Error")
        );
        let t = Termination::from_exit(1, Some(0), None, ts(0), ts(1));
        assert_eq!(
            (t.exit_code, t.signal, t.reason.as_str()),
            (0, None, "Completed")
        );
    }
}
