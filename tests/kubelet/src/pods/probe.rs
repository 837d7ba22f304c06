//! Readiness probes: `exec`, `httpGet` and `tcpSocket`, with the probe's delays and thresholds.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What a probe needs to know about its container.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub ports: Vec<ContainerPort>,
    /// The pod's address, where `httpGet` and `tcpSocket` probes without a `host` connect (as a kubelet does).
    pub pod_ip: Ipv4Addr,
}

/// A probe's `host`, or the pod's address when it is unset or empty.
fn host(given: Option<&str>, pod_ip: Ipv4Addr) -> String {
    given
        .filter(|h| !h.is_empty())
        .map_or_else(|| pod_ip.to_string(), str::to_string)
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

/// Probes until dropped, reporting readiness through `report` each time it changes (starting unready).
pub async fn readiness(probe: Probe, target: ProbeTarget, report: impl Fn(bool)) {
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let (mut ready, mut successes, mut failures) = (false, 0, 0);
    loop {
        if check(&probe, &target).await {
            successes += 1;
            failures = 0;
            if !ready && successes >= success_threshold {
                ready = true;
                report(true);
            }
        } else {
            failures += 1;
            successes = 0;
            if ready && failures >= failure_threshold {
                ready = false;
                report(false);
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// One probe attempt.
pub async fn check(probe: &Probe, target: &ProbeTarget) -> bool {
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let attempt = async {
        if let Some(exec) = &probe.exec {
            let Some((program, args)) = exec.command.as_deref().unwrap_or_default().split_first()
            else {
                return false;
            };
            let status = tokio::process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(target.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&target.cwd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
            return status.is_ok_and(|s| s.success());
        }
        if let Some(http) = &probe.http_get {
            let Some(port) = port(&http.port, &target.ports) else {
                return false;
            };
            let scheme = http
                .scheme
                .as_deref()
                .unwrap_or("HTTP")
                .to_ascii_lowercase();
            let host = host(http.host.as_deref(), target.pod_ip);
            let path = http.path.as_deref().unwrap_or("/");
            let url = format!("{scheme}://{host}:{port}/{}", path.trim_start_matches('/'));
            let Ok(client) = reqwest::Client::builder().timeout(timeout).build() else {
                return false;
            };
            let mut request = client.get(&url);
            for h in http.http_headers.iter().flatten() {
                request = request.header(&h.name, &h.value);
            }
            return request
                .send()
                .await
                .is_ok_and(|r| (200..400).contains(&r.status().as_u16()));
        }
        if let Some(tcp) = &probe.tcp_socket {
            let Some(port) = port(&tcp.port, &target.ports) else {
                return false;
            };
            let host = host(tcp.host.as_deref(), target.pod_ip);
            return tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .is_ok();
        }
        false
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn port(port: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => name.parse().ok().or_else(|| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, TCPSocketAction};

    fn target() -> ProbeTarget {
        ProbeTarget {
            env: vec![("WANT".into(), "yes".into())],
            cwd: std::env::temp_dir(),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }],
            pod_ip: Ipv4Addr::LOCALHOST,
        }
    }

    #[test]
    fn named_ports_resolve() {
        let t = target();
        assert_eq!(port(&IntOrString::Int(9000), &t.ports), Some(9000));
        assert_eq!(
            port(&IntOrString::String("http".into()), &t.ports),
            Some(8080)
        );
        assert_eq!(port(&IntOrString::String("nope".into()), &t.ports), None);
    }

    #[tokio::test]
    async fn exec_probe_uses_the_container_env() {
        let exec = |cmd: &str| Probe {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/sh".into(), "-c".into(), cmd.into()]),
            }),
            ..Probe::default()
        };
        assert!(check(&exec("test \"$WANT\" = yes"), &target()).await);
        assert!(!check(&exec("exit 1"), &target()).await);
    }

    #[tokio::test]
    async fn http_probe_against_a_closed_port_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(port)),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        };
        assert!(!check(&probe, &target()).await);
    }

    #[test]
    fn probes_without_a_host_go_to_the_pod_ip() {
        let pod_ip = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(host(None, pod_ip), "10.1.2.3");
        assert_eq!(host(Some(""), pod_ip), "10.1.2.3");
        assert_eq!(host(Some("example.test"), pod_ip), "example.test");
    }

    /// Every 127/8 address is loopback on Linux, so a listener on 127.0.0.2 stands in for a pod with its own
    /// address: only a probe that dials the target's address reaches it.
    #[tokio::test]
    async fn tcp_probe_dials_the_pod_ip() {
        let pod_ip = Ipv4Addr::new(127, 0, 0, 2);
        let listener = tokio::net::TcpListener::bind((pod_ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        };
        let mut at_pod_ip = target();
        at_pod_ip.pod_ip = pod_ip;
        assert!(check(&probe, &at_pod_ip).await);
        assert!(!check(&probe, &target()).await);
    }
}
