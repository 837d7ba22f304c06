//! `sluice-operator run`: the operator process. It campaigns for the leader Lease, serves the worker broker and
//! the health port on every replica, and — only while it leads — runs the FlowRun controllers behind the
//! broker.
//!
//! Lifecycle:
//! - **Start**: health and broker ports are bound first (the broker answers 503 and `/readyz` says "not the
//!   leader" until this replica leads).
//! - **Leadership gained**: [`Operator::lead`] opens the broker at once, runs the controllers, and loads
//!   every run with work in flight into the broker from its status as the controllers' caches fill (the
//!   controllers decide every other run from their first list).
//! - **Leadership lost after leading**: the process exits non-zero at once and Kubernetes restarts it as a
//!   follower. Everything the old term kept in memory (queue, claims, watches, pending status batches, spawned
//!   tasks) dies with the process, so nothing from a stale term can write after a new leader took over — the
//!   simplest fencing there is, and cheap because all state that matters lives in the API server (invariant 6).
//! - **SIGTERM/SIGINT**: the controllers stop, the lease is released (another replica takes over at once
//!   instead of after expiry), the servers drain, and the process exits 0. A second signal exits at once.

mod heap;
pub mod leader;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use axum::Router;
use clap::{Args, ValueEnum};
use kube::Client;
use sluice_operator::broker::auth::TrustAll;
use sluice_operator::context::{Scope, pod_name};
use sluice_operator::engine::budget::DEFAULT_MAX_STATUS_BYTES;
use sluice_operator::runtime::{ExternalMetricsConfig, Operator};
use sluice_operator::telemetry::Metrics;
use sluice_operator::telemetry::api_calls::counted_client;
use sluice_operator::telemetry::health::Health;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use leader::{LEASE_GRACE_SECONDS, Leadership, LeaseConfig};

/// Smallest `--max-status-bytes`: below it even a few steps' bookkeeping would not fit.
const MIN_MAX_STATUS_BYTES: u64 = 16 * 1024;

/// How long the controllers get to stop after SIGTERM before the process releases the lease anyway.
const LEAD_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the HTTP servers get to finish open requests (long polls included) at shutdown.
const SERVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-request bound of the lease client: a renewal must fail well before the lease could expire.
const LEASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(LEASE_GRACE_SECONDS - 1);

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable lines.
    Text,
}

/// Options of `sluice-operator run`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    /// Address of the worker broker (HTTP).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    pub broker_addr: SocketAddr,

    /// URL under which worker pods reach the broker, given to every WorkerPool's pods as `SLUICE_BROKER_URL`
    /// (in a cluster: the broker Service, e.g. `http://sluice-broker.sluice-system.svc:8081`). Default:
    /// `http://<broker-addr>` when the broker listens on one address, else the Service
    /// `sluice-broker.<lease-namespace>.svc` on the broker's port.
    #[arg(long, value_name = "URL", env = "SLUICE_OPERATOR_BROKER_URL")]
    pub broker_url: Option<String>,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,

    /// Watch only this namespace (repeatable, or comma-separated). Default: every namespace.
    #[arg(long = "namespace", value_name = "NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "sluice-operator")]
    pub lease_name: String,

    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    pub lease_namespace: String,

    /// This replica's identity in the Lease. Default: `POD_NAME`, else `<hostname>-<pid>` (unique per
    /// process, so two operators started by hand on one machine never share leadership).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,

    /// Accept every broker caller as a worker of any pool, without TokenReview. Local development only.
    #[arg(long)]
    pub insecure_skip_worker_auth: bool,

    /// Serve the external metrics API (`external.metrics.k8s.io`, the metric `sluice_queue_depth`) over HTTPS
    /// on this address, so a HorizontalPodAutoscaler can scale WorkerPools on their queue depth. Needs the
    /// `APIService` `v1beta1.external.metrics.k8s.io` pointing at `--external-metrics-service` (the chart
    /// installs it with `externalMetrics.enabled`). Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub external_metrics_addr: Option<SocketAddr>,

    /// The Service (in the Lease namespace) in front of the external metrics API: the name its generated
    /// certificate carries and the one the `APIService` must point at.
    #[arg(long, value_name = "NAME", default_value = "sluice-external-metrics")]
    pub external_metrics_service: String,

    /// Serve `tls.crt` and `tls.key` of this directory (a mounted Secret, e.g. issued by cert-manager; re-read
    /// when it changes) instead of a generated certificate whose CA the leader publishes in the `APIService`.
    #[arg(long, value_name = "DIR")]
    pub external_metrics_cert_dir: Option<PathBuf>,

    /// Delete a finished FlowRun (Succeeded, Failed or Cancelled) that sets no `spec.ttlSecondsAfterFinished`
    /// this many seconds after it finished, with its child FlowRuns. Not given: such runs are kept until deleted
    /// by hand.
    #[arg(long, value_name = "SECONDS")]
    pub default_ttl_seconds_after_finished: Option<u32>,

    /// Budget of a running FlowRun's status, in bytes of JSON: a step that would grow the status past it fails
    /// with `StatusTooLarge`, naming what grew, and the run fails. Keep it well below etcd's object limit (1.5
    /// MiB by default), which the spec and metadata share.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_STATUS_BYTES,
        value_parser = clap::value_parser!(u64).range(MIN_MAX_STATUS_BYTES..)
    )]
    pub max_status_bytes: u64,

    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// Which namespaces the controllers watch.
    pub fn scope(&self) -> Scope {
        let namespaces: Vec<String> = self
            .namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(namespaces)
        }
    }

    /// The URL worker pods use to reach the broker.
    pub fn broker_url(&self) -> String {
        match self.broker_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
            _ if self.broker_addr.ip().is_unspecified() => format!(
                "http://sluice-broker.{}.svc:{}",
                self.lease_namespace,
                self.broker_addr.port()
            ),
            _ => format!("http://{}", self.broker_addr),
        }
    }

    /// The Lease identity of this process.
    pub fn identity(&self) -> String {
        match self.identity.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                let host = hostname::get()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "sluice-operator".to_owned());
                format!("{host}-{}", std::process::id())
            }
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT (then `Ok`) or until something forces an exit (then `Err`: lost
/// leadership, the controllers failing, a port that cannot be bound, no cluster).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format)?;
    // A workspace build may compile several rustls providers in (kube: ring, reqwest: aws-lc-rs); pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = args.identity();
    let scope = args.scope();
    info!(version = env!("CARGO_PKG_VERSION"), %identity, ?scope, "starting the Sluice operator");

    let config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration")?;
    let metrics = Metrics::new();
    heap::spawn_sampler(metrics.clone());
    let client =
        counted_client(config.clone(), &metrics).context("building the Kubernetes client")?;
    let lease_client = Client::try_from(lease_client_config(config))
        .context("building the Kubernetes client for the lease")?;

    let mut builder = Operator::builder(client)
        .scope(scope)
        .metrics(metrics.clone())
        .instance(pod_name())
        .worker_pools(args.broker_url())
        .default_ttl_seconds_after_finished(args.default_ttl_seconds_after_finished)
        .max_status_bytes(args.max_status_bytes);
    if args.insecure_skip_worker_auth {
        warn!(
            "WORKER AUTHENTICATION IS DISABLED (--insecure-skip-worker-auth): anyone who reaches the broker port \
             can claim, complete and fail any task of any pool in any namespace. Never run like this outside \
             local development."
        );
        builder = builder.authenticator(Arc::new(TrustAll));
    }
    if let Some(addr) = args.external_metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the external metrics API to {addr}"))?;
        builder = builder.external_metrics(ExternalMetricsConfig {
            listener,
            service: args.external_metrics_service.clone(),
            namespace: args.lease_namespace.clone(),
            cert_dir: args.external_metrics_cert_dir.clone(),
        });
    }

    let broker_listener = TcpListener::bind(args.broker_addr)
        .await
        .with_context(|| format!("binding the broker to {}", args.broker_addr))?;
    let health_listener = TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("binding the health port to {}", args.health_addr))?;
    let operator = Arc::new(builder.build().await.context("starting the operator")?);
    let broker = operator.broker();

    let stop = install_signal_handlers().context("installing signal handlers")?;

    let leadership = Leadership::start(
        lease_client,
        LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity,
        },
    )
    .await?;
    let leader = leadership.subscribe();

    let ready_broker = broker.clone();
    let health = Health::new(metrics, leader.clone(), move || ready_broker.is_ready());
    let (drain, draining) = watch::channel(false);
    let mut broker_server = {
        let (operator, draining) = (operator.clone(), draining.clone());
        tokio::spawn(async move {
            operator
                .serve(broker_listener, async move {
                    let mut draining = draining;
                    let _ = draining.wait_for(|d| *d).await;
                })
                .await
                .map_err(std::io::Error::other)
        })
    };
    let mut health_server = tokio::spawn(serve(health_listener, health.router(), draining));
    info!(broker = %args.broker_addr, health = %args.health_addr, "serving");

    let outcome = tokio::select! {
        outcome = lead_while_elected(&operator, leader, stop) => outcome,
        r = &mut broker_server => Outcome::Failed(anyhow!("the broker server stopped: {}", server_end(r))),
        r = &mut health_server => Outcome::Failed(anyhow!("the health server stopped: {}", server_end(r))),
    };
    broker.set_ready(false);

    match outcome {
        Outcome::Stopped => {
            leadership.release().await;
            let _ = drain.send(true);
            let drained = tokio::time::timeout(SERVER_DRAIN_TIMEOUT, async {
                let _ = (&mut broker_server).await;
                let _ = (&mut health_server).await;
            })
            .await;
            if drained.is_err() {
                warn!("open requests did not finish in time; closing them");
            }
            info!("stopped");
            Ok(())
        }
        Outcome::LostLeadership => {
            // Not ours to release any more. Exiting drops every task of the old term (see the module docs).
            error!("lost leadership; exiting so that a fresh process rejoins the election");
            drop(leadership);
            Err(anyhow!("lost leadership"))
        }
        Outcome::Failed(e) => {
            error!(error = %e, "the operator cannot go on; releasing the lease and exiting");
            leadership.release().await;
            Err(e)
        }
    }
}

/// How the leading part of the process ended.
#[derive(Debug)]
enum Outcome {
    /// SIGTERM/SIGINT.
    Stopped,
    /// Leadership lost after (or while) leading.
    LostLeadership,
    /// Something else that ends the process.
    Failed(anyhow::Error),
}

/// Waits for leadership, then leads until leadership is lost or `stop` fires.
async fn lead_while_elected(
    operator: &Operator,
    leader: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) -> Outcome {
    info!("waiting for leadership");
    tokio::select! {
        biased;
        _ = signalled(stop.clone()) => return Outcome::Stopped,
        elected = elected(leader.clone()) => {
            if !elected {
                return Outcome::Failed(anyhow!("leader election ended before this replica was elected"));
            }
        }
    }
    info!("leading: starting the controllers and loading FlowRuns from their statuses");

    // The controllers stop on either leadership loss or a signal.
    let shutdown = {
        let (leader, stop) = (leader.clone(), stop.clone());
        async move {
            tokio::select! {
                _ = lost(leader) => {}
                _ = signalled(stop) => {}
            }
        }
    };
    let lead = operator.lead(shutdown);
    tokio::pin!(lead);
    tokio::select! {
        // Leadership loss wins over everything: exit without waiting for the controllers to wind down.
        biased;
        _ = lost(leader.clone()) => {
            if *stop.borrow() {
                // Our own release after a signal, not a loss.
                return Outcome::Stopped;
            }
            Outcome::LostLeadership
        }
        _ = signalled(stop.clone()) => {
            info!("stopping: waiting for the controllers to finish");
            tokio::select! {
                biased;
                _ = lost(leader.clone()) => warn!("lost leadership while stopping"),
                finished = tokio::time::timeout(LEAD_STOP_TIMEOUT, &mut lead) => match finished {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "the controllers stopped with an error"),
                    Err(_) => warn!(timeout_s = LEAD_STOP_TIMEOUT.as_secs(), "the controllers did not stop in time"),
                },
            }
            Outcome::Stopped
        }
        result = &mut lead => match result {
            Ok(()) if *stop.borrow() => Outcome::Stopped,
            Ok(()) if !*leader.borrow() => Outcome::LostLeadership,
            Ok(()) => Outcome::Failed(anyhow!("the controllers stopped while this replica still leads")),
            Err(e) => Outcome::Failed(anyhow::Error::new(e).context("leading failed")),
        },
    }
}

/// Resolves when this replica leads (`true`) or the election ended (`false`).
async fn elected(mut leader: watch::Receiver<bool>) -> bool {
    leader.wait_for(|l| *l).await.is_ok()
}

/// Resolves when this replica does not lead (or the election ended).
async fn lost(mut leader: watch::Receiver<bool>) {
    let _ = leader.wait_for(|l| !*l).await;
}

/// Resolves on the first SIGTERM/SIGINT.
async fn signalled(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `router` until `draining` turns true.
async fn serve(
    listener: TcpListener,
    router: Router,
    mut draining: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = draining.wait_for(|d| *d).await;
        })
        .await
}

fn server_end(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "without an error".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// A client configuration for the lease whose every request is bounded, so that a hanging renewal fails (and
/// this replica steps down) before the lease can expire under it.
fn lease_client_config(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(LEASE_REQUEST_TIMEOUT);
    config.read_timeout = Some(LEASE_REQUEST_TIMEOUT);
    config.write_timeout = Some(LEASE_REQUEST_TIMEOUT);
    config
}

/// Turns true on the first SIGTERM or SIGINT; a second one exits the process at once.
fn install_signal_handlers() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = first,
            "shutting down (send it again to exit at once)"
        );
        tx.send_replace(true);
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        warn!(signal = second, "second signal: exiting now");
        std::process::exit(130);
    });
    Ok(rx)
}

fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| anyhow!("initialising logging: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn defaults() {
        let args = parse(&[]);
        assert_eq!(args.broker_addr, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(args.health_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(args.scope(), Scope::All);
        assert_eq!(args.lease_name, "sluice-operator");
        let expected_ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".to_owned());
        assert_eq!(args.lease_namespace, expected_ns);
        assert!(!args.insecure_skip_worker_auth);
        assert_eq!(args.broker_url(), "http://sluice-broker.default.svc:8081");
        assert_eq!(args.log_format, LogFormat::Text);
        assert!(!args.identity().is_empty());
        assert_eq!(
            args.external_metrics_addr, None,
            "external metrics are off by default"
        );
        assert_eq!(args.external_metrics_service, "sluice-external-metrics");
        assert_eq!(args.external_metrics_cert_dir, None);
        assert_eq!(
            args.default_ttl_seconds_after_finished, None,
            "finished runs are kept unless asked otherwise"
        );
        assert_eq!(args.max_status_bytes, 1024 * 1024);
    }

    #[test]
    fn the_status_budget_is_bytes_from_16_kib() {
        let args = parse(&["--max-status-bytes", "524288"]);
        assert_eq!(args.max_status_bytes, 524_288);
        assert_eq!(
            parse(&["--max-status-bytes=16384"]).max_status_bytes,
            16_384
        );
        for bad in ["16383", "-1", "1MiB", "", "0"] {
            let argv = ["run", "--max-status-bytes", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_default_ttl_is_whole_seconds_from_zero() {
        for (given, want) in [("0", 0), ("3600", 3600), ("4294967295", u32::MAX)] {
            let args = parse(&["--default-ttl-seconds-after-finished", given]);
            assert_eq!(
                args.default_ttl_seconds_after_finished,
                Some(want),
                "{given}"
            );
        }
        let args = parse(&["--default-ttl-seconds-after-finished=86400"]);
        assert_eq!(args.default_ttl_seconds_after_finished, Some(86400));
        for bad in ["-1", "1.5", "1h", "", "4294967296"] {
            let argv = ["run", "--default-ttl-seconds-after-finished", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn every_flag_parses() {
        let args = parse(&[
            "--broker-addr",
            "127.0.0.1:9001",
            "--health-addr",
            "127.0.0.1:9000",
            "--namespace",
            "team-a",
            "--namespace",
            "team-b,team-c",
            "--lease-name",
            "l",
            "--lease-namespace",
            "ops",
            "--identity",
            "replica-1",
            "--insecure-skip-worker-auth",
            "--log-format",
            "json",
            "--external-metrics-addr",
            "0.0.0.0:6443",
            "--external-metrics-service",
            "metrics",
            "--external-metrics-cert-dir",
            "/certs",
            "--default-ttl-seconds-after-finished",
            "600",
            "--max-status-bytes",
            "700000",
        ]);
        assert_eq!(args.default_ttl_seconds_after_finished, Some(600));
        assert_eq!(args.max_status_bytes, 700_000);
        assert_eq!(
            args.external_metrics_addr,
            Some("0.0.0.0:6443".parse().unwrap())
        );
        assert_eq!(args.external_metrics_service, "metrics");
        assert_eq!(
            args.external_metrics_cert_dir,
            Some(PathBuf::from("/certs"))
        );
        assert_eq!(args.broker_addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            args.broker_url(),
            "http://127.0.0.1:9001",
            "a loopback broker is reached where it listens"
        );
        assert_eq!(args.health_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            args.scope(),
            Scope::Namespaces(vec!["team-a".into(), "team-b".into(), "team-c".into()])
        );
        assert_eq!(args.lease_name, "l");
        assert_eq!(args.lease_namespace, "ops");
        assert_eq!(args.identity(), "replica-1");
        assert!(args.insecure_skip_worker_auth);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--broker-addr", "nope"][..],
            &["--log-format", "xml"][..],
            &["--health-addr"][..],
            &["--external-metrics-addr", "6443"][..],
            &["--unknown"][..],
        ] {
            let argv = std::iter::once("run").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_identity_is_unique_per_process() {
        let args = RunArgs {
            identity: None,
            ..parse(&[])
        };
        let id = args.identity();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        let blank = RunArgs {
            identity: Some("  ".into()),
            ..parse(&[])
        };
        assert_eq!(blank.identity(), id);
    }

    #[test]
    fn lease_requests_end_before_the_grace_runs_out() {
        let config = lease_client_config(kube::Config::new("http://127.0.0.1:1".parse().unwrap()));
        assert!(config.read_timeout.unwrap() < Duration::from_secs(LEASE_GRACE_SECONDS));
        assert!(config.write_timeout.unwrap() < Duration::from_secs(LEASE_GRACE_SECONDS));
        assert!(config.connect_timeout.unwrap() < Duration::from_secs(LEASE_GRACE_SECONDS));
    }
}
