//! Loopback ports for the operators and releases the tests start (pods are processes on this machine, so each
//! needs ports of its own).
//!
//! The harness picks a port and the operator binds it a moment later. A port the kernel hands out for
//! `bind(0)` comes from the ephemeral range, the same range every outgoing connection takes its local port
//! from, so in that moment a connection to the API server can take it and the operator fails to start. Ports
//! below that range are taken only by listeners, so the harness hands those out, each process walking its
//! own stretch of them.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{HarnessError, Result};

/// The lowest port handed out: above the ports well-known services listen on.
const LOWEST: u32 = 20_000;
/// Where the ephemeral range starts when the kernel does not say (Linux's default).
const DEFAULT_EPHEMERAL_START: u32 = 32_768;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port that is free now and outside the ephemeral range.
pub fn free_port() -> Result<u16> {
    let end = ephemeral_start().max(LOWEST + 1_000);
    let span = end - LOWEST;
    // Test binaries may run side by side: start each process somewhere else in the stretch.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port =
            u16::try_from(LOWEST + offset).expect("ports below the ephemeral range fit in u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(HarnessError::io("finding a free port")(
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("every loopback port from {LOWEST} to {end} is taken"),
        ),
    ))
}

fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range_and_do_not_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let end = ephemeral_start().max(LOWEST + 1_000);
        assert!(
            ports
                .iter()
                .all(|&p| u32::from(p) >= LOWEST && u32::from(p) < end),
            "{ports:?} leave {LOWEST}..{end}"
        );
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
    }
}
