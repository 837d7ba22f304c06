//! `kubectl sluice ui`: a live web view of FlowRuns, served by the plugin on 127.0.0.1 with the user's own
//! kubeconfig credentials, so it can see and do exactly what the user can, and adds no server-side surface.
//!
//! - [`server`]: the router, and the page and its assets, embedded in the binary (no CDN: works offline).
//! - [`api`]: JSON endpoints for the list, one run and one step, and the actions (signal, cancel,
//!   suspend/resume, retry), which call the plugin commands' own functions.
//! - [`live`]: server-sent events from watches of the API server.
//! - [`security`]: loopback only; Host and Origin must be the server's own; changes need the session token.
//! - [`view`]: what the page is sent.

pub mod api;
pub mod live;
pub mod security;
pub mod server;
pub mod view;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use kube::Client;
use tokio::net::TcpListener;

use crate::cli::UiArgs;
use crate::kubeconfig::Connection;
use crate::{Error, Result};
pub use server::Scope;

/// A server bound to its port, ready to serve.
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    url: String,
    scope: Scope,
}

impl Server {
    /// Binds `127.0.0.1:port` (0: a free port) for `client`'s view of `scope`, with a new session token.
    pub async fn bind(client: Client, scope: Scope, port: u16) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Serve(format!("cannot listen on {addr}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Serve(e.to_string()))?
            .port();
        let token = security::new_token()
            .map_err(|e| Error::Serve(format!("no random session token: {e}")))?;
        let state = Arc::new(server::AppState {
            client,
            index: server::index_page(&token, &scope),
            scope: scope.clone(),
        });
        let guard = Arc::new(security::Guard::new(port, token));
        Ok(Self {
            listener,
            router: server::router(state, guard),
            url: format!("http://127.0.0.1:{port}/"),
            scope,
        })
    }

    /// The URL to open.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Serve(e.to_string()))
    }
}

/// Opens `url` in the default browser; a failure is only reported.
fn open_browser(url: &str) {
    let mut cmd = if cfg!(target_os = "macos") {
        std::process::Command::new("open")
    } else if cfg!(windows) {
        let mut c = std::process::Command::new("cmd");
        c.args(["/C", "start", ""]);
        c
    } else {
        std::process::Command::new("xdg-open")
    };
    cmd.arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Err(e) = cmd.spawn() {
        eprintln!("note: could not open a browser ({e}); open {url} yourself");
    }
}

/// `kubectl sluice ui`: prints the URL and serves until Ctrl-C.
pub async fn run(conn: Connection, args: &UiArgs) -> Result<u8> {
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(conn.namespace.clone())
    };
    let server = Server::bind(conn.client, scope, args.port).await?;
    crate::cmd::print(&format!(
        "Sluice web view of {} at {}\n(serving on 127.0.0.1 with your kubeconfig's credentials; Ctrl-C stops it)\n",
        server.scope.describe(),
        server.url()
    ))?;
    if args.open {
        open_browser(server.url());
    }
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(0)
}
