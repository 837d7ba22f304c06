//! The addresses a pod reports: `hostIP` is always the Node's (loopback), `podIP` too unless the pod opts in
//! to an address of this machine with [`POD_IP_ANNOTATION`].
//!
//! Why the opt-in: the API server refuses loopback addresses in EndpointSlices and Endpoints, so a Service
//! whose pod reports 127.0.0.1 never gets an endpoint, and the aggregator (which dials a Service's endpoint
//! addresses) can never reach an aggregated API server running as a pod. Processes share the host's network,
//! so reporting an address of the host is as true as reporting loopback; the kubelet does not decide where a
//! process binds.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// The Node's address, every pod's `hostIP` and, by default, its `podIP`.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Pod annotation choosing the pod's `podIP`: [`HOST`] reports the first non-loopback, non-link-local IPv4
/// address of this machine; absent or any other value, the pod keeps [`NODE_IP`].
pub const POD_IP_ANNOTATION: &str = "sluice.dev/kubelet-pod-ip";

/// The [`POD_IP_ANNOTATION`] value asking for an address of this machine.
pub const HOST: &str = "host";

/// The pod asked for a host address and this machine has none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the pod asks for a host pod IP ({POD_IP_ANNOTATION}: {HOST}) but this machine has no non-loopback, \
     non-link-local IPv4 address"
)]
pub struct NoHostAddress;

/// Whether `pod` opts in to a host address.
pub fn wants_host_address(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_IP_ANNOTATION))
        .is_some_and(|v| v == HOST)
}

/// The `podIP` of `pod`. `host_address` finds this machine's address; it is injected so that tests do not
/// depend on the machine, and only called when the pod opts in.
pub fn pod_ip(
    pod: &Pod,
    host_address: impl FnOnce() -> Option<Ipv4Addr>,
) -> Result<Ipv4Addr, NoHostAddress> {
    if wants_host_address(pod) {
        host_address().ok_or(NoHostAddress)
    } else {
        Ok(NODE_IP)
    }
}

/// The first address another host (or the aggregator) could dial: not loopback, not link-local (which the
/// API server refuses too), not unspecified.
pub fn first_routable(candidates: impl IntoIterator<Item = Ipv4Addr>) -> Option<Ipv4Addr> {
    candidates
        .into_iter()
        .find(|ip| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
}

/// This machine's first routable IPv4 address (as the e2e harness finds one), if any.
pub fn host_address() -> Option<Ipv4Addr> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            tracing::warn!(error = %e, "listing network interfaces");
            return None;
        }
    };
    first_routable(interfaces.filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn annotated(value: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: value.map(|v| [(POD_IP_ANNOTATION.to_string(), v.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    const MACHINE: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

    #[test]
    fn only_the_host_value_picks_the_machine_address() {
        assert_eq!(
            pod_ip(&annotated(Some("host")), || Some(MACHINE)),
            Ok(MACHINE)
        );
        for other in [None, Some(""), Some("Host"), Some("10.9.9.9")] {
            let lookup = || -> Option<Ipv4Addr> { panic!("looked up for {other:?}") };
            assert_eq!(pod_ip(&annotated(other), lookup), Ok(NODE_IP), "{other:?}");
        }
    }

    #[test]
    fn no_machine_address_is_an_error() {
        assert_eq!(
            pod_ip(&annotated(Some("host")), || None),
            Err(NoHostAddress)
        );
    }

    #[test]
    fn loopback_link_local_and_unspecified_are_skipped() {
        let candidates = [
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(169, 254, 0, 7),
            Ipv4Addr::UNSPECIFIED,
            MACHINE,
            Ipv4Addr::new(192, 168, 0, 2),
        ];
        assert_eq!(first_routable(candidates), Some(MACHINE));
        assert_eq!(first_routable([Ipv4Addr::LOCALHOST]), None);
    }
}
