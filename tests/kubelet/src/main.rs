//! sluice-kubelet: a kubelet for tests that runs the pods bound to its Node as local processes.
//! See tests/kubelet/README.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use jiff::Timestamp;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

mod images;
mod lease;
mod node;
mod pods;
mod token;

use pods::backoff::{Backoff, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-kubelet",
    about = "Runs the pods bound to its Node as local processes"
)]
struct Args {
    /// Kubeconfig of the cluster (default: KUBECONFIG or ~/.kube/config, or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Name of the Node to register.
    #[arg(long, default_value = "sluice-local")]
    node_name: String,
    /// The image map (image name -> local executable).
    #[arg(long, default_value = "tests/kubelet/images.yaml")]
    images: PathBuf,
    /// Directory relative executables of the image map are resolved against (default: the nearest ancestor of
    /// the image map holding a Cargo.lock, else the working directory).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Where pod directories (work dirs, volumes, logs) live.
    #[arg(long)]
    state_dir: PathBuf,
    /// First restart back-off after the immediate first restart (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Longest restart back-off.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    backoff_max: Duration,
    /// How often the Node's Ready condition and Lease are renewed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// The most time pods get to stop when the kubelet itself stops.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Exit (stopping every pod) when standard input closes.
    #[arg(long)]
    exit_on_stdin_close: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // Several rustls providers may be compiled in (kube: ring, reqwest: aws-lc-rs); use kube's.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (config, api_server) = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(
                kubeconfig.clone(),
                &KubeConfigOptions::default(),
            )
            .await?;
            let api_server =
                pods::incluster::from_kubeconfig(&kubeconfig, path, config.cluster_url.to_string());
            (config, api_server)
        }
        None => {
            let config = kube::Config::infer().await?;
            let api_server = pods::incluster::ApiServer {
                server: config.cluster_url.to_string(),
                ca: None,
            };
            (config, api_server)
        }
    };
    let mut base_env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    )];
    if let (Some(host), Some(port)) = (config.cluster_url.host(), config.cluster_url.port_u16()) {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        base_env.push(("KUBERNETES_SERVICE_HOST".into(), host));
        base_env.push(("KUBERNETES_SERVICE_PORT".into(), port.to_string()));
    }
    let client = Client::try_from(config)?;

    let root = args
        .root
        .clone()
        .unwrap_or_else(|| default_root(&args.images));
    let images = images::ImageMap::load(&args.images, &root)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    tracing::info!(node = %args.node_name, state_dir = %state_dir.display(), root = %root.display(), "sluice-kubelet starting");

    let ctx = Arc::new(pods::Ctx {
        client: client.clone(),
        node_name: args.node_name.clone(),
        images,
        state_dir,
        backoff: Backoff {
            base: args.backoff_base,
            max: args.backoff_max.max(args.backoff_base),
        },
        base_env,
        api_server,
        shutdown_grace: args.shutdown_grace,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let node_task = tokio::spawn(node_agent(
        client.clone(),
        args.node_name.clone(),
        args.heartbeat,
    ));
    let bind_task = tokio::spawn(pods::bind::run(client.clone(), args.node_name.clone()));
    let pods_task = tokio::spawn(pods::run(ctx, stop_rx));

    wait_for_stop(args.exit_on_stdin_close).await?;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    bind_task.abort();
    node_task.abort();
    if tokio::time::timeout(args.shutdown_grace + Duration::from_secs(5), pods_task)
        .await
        .is_err()
    {
        tracing::warn!("pods did not stop in time");
    }
    tracing::info!("stopped");
    Ok(())
}

fn default_root(images: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(images).unwrap_or_else(|_| images.to_path_buf());
    absolute
        .ancestors()
        .skip(1)
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default()
}

/// Registers the Node, then renews its Ready heartbeat and Lease every `period`.
async fn node_agent(client: Client, name: String, period: Duration) {
    let ready_since = Timestamp::now();
    let node = loop {
        match node::register(&client, &name, ready_since).await {
            Ok(node) => break node,
            Err(e) => {
                tracing::warn!(error = %e, "registering node; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = lease::renew(&client, &node).await {
            tracing::warn!(error = %e, "renewing node lease");
        }
        if let Err(e) = node::heartbeat(&client, &name, ready_since).await {
            tracing::warn!(error = %e, "node heartbeat");
        }
    }
}

/// Returns on SIGTERM, SIGINT, or (if asked) the end of standard input.
async fn wait_for_stop(exit_on_stdin_close: bool) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stdin_closed = async {
        if !exit_on_stdin_close {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        () = stdin_closed => tracing::info!("standard input closed"),
    }
    Ok(())
}
