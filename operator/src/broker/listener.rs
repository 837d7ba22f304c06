//! The socket side of the broker: how its connections are accepted.

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// `listener` with Nagle's algorithm turned off on every connection it accepts. A worker waits on every
/// answer of the broker (a claim's task, a result's acknowledgement), so each answer must leave at once rather
/// than wait for the acknowledgement of the previous segment; axum leaves the algorithm on.
pub fn without_nagle(listener: TcpListener) -> impl Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            warn!(%error, "could not disable Nagle's algorithm on a broker connection");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_without_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = without_nagle(listener);
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(
            accepted.nodelay().unwrap(),
            "the broker's side of a connection still delays small answers (TCP_NODELAY off)"
        );
        drop(client);
    }
}
