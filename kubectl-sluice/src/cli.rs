//! The command line: `kubectl sluice [flags] COMMAND FLOWRUN ...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code of `watch` (and `retry --wait`) when the run ends Failed.
pub const EXIT_FAILED: u8 = 3;
/// Exit code of `watch` when the run ends Cancelled.
pub const EXIT_CANCELLED: u8 = 4;

/// Follow and steer Sluice FlowRuns: the DAG as a tree, signals, cancel, suspend/resume, retry from the point
/// of failure, the graph, and live updates.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-sluice",
    bin_name = "kubectl sluice",
    version,
    after_help = "Examples:\n  kubectl sluice status order-42\n  kubectl sluice status order-42 -o json\n  kubectl sluice signal expense-7 manager-approval --data '{\"approved\": true}'\n  kubectl sluice retry order-42\n  kubectl sluice graph order-42 --format dot | dot -Tsvg > order.svg\n  kubectl sluice watch order-42 && echo done\n  kubectl sluice cron trigger nightly-report\n  kubectl sluice templates\n  kubectl sluice ui --open\n\nExit codes: 0 success; 1 an error (not found, API error, invalid input); 2 a usage error;\nwatch: 3 when the run ends Failed, 4 when it ends Cancelled."
)]
pub struct Cli {
    /// Cluster connection flags.
    #[command(flatten)]
    pub kube: KubeArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The usual kubeconfig flags of kubectl plugins.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Namespace of the FlowRun (default: the namespace of the kubeconfig context, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a FlowRun's steps as a tree following dependsOn: phase, attempt, duration (elapsed so far while
    /// running), worker and the last error. Coloured when stdout is a terminal and NO_COLOR is unset.
    Status(StatusArgs),

    /// Deliver a signal: merge-patch status.signals.NAME.payload through the status subresource, the same patch
    /// as `kubectl patch flowrun FLOWRUN --subresource=status --type=merge -p '{"status":{"signals":{"NAME":{"payload":...}}}}'`.
    /// The payload is validated as JSON before anything is written.
    Signal(SignalArgs),

    /// Cancel the run (sets spec.cancel): no new step starts, running workers are asked to stop.
    Cancel(Target),

    /// Pause the dispatch of new steps (sets spec.suspend); running steps finish.
    Suspend(Target),

    /// Resume a suspended run (clears spec.suspend).
    Resume(Target),

    /// Retry a Failed run from the point of failure: failed and cancelled steps run again with new attempt
    /// numbers, succeeded steps keep their outputs. Writes a new spec.retryRequest token; the operator does the
    /// rest and records it in status.retry.
    Retry(RetryArgs),

    /// Print the DAG with each step's phase, as a Mermaid flowchart (default) or Graphviz DOT.
    Graph(GraphArgs),

    /// Follow the run live: one line per step phase change until the run ends. Exit code 0 when it Succeeded,
    /// 3 when it Failed, 4 when it was Cancelled.
    Watch(WatchArgs),

    /// CronFlows (FlowRuns on a schedule): list them, or start a run of one now.
    #[command(subcommand)]
    Cron(CronCommand),

    /// List the namespace's FlowTemplates: pool, declared inputs (`name:type`, `*` when required, `=value`
    /// for a default), steps (and exit steps) and description. Run one with a FlowRun's spec.templateRef.
    Templates,

    /// Serve a live web view of the FlowRuns on 127.0.0.1, with your kubeconfig's credentials: a list of runs,
    /// each run's DAG, steps, signals and Events, updated live, and buttons for signal, cancel,
    /// suspend/resume and retry (the same checks and writes as these commands). Prints its URL and serves
    /// until interrupted. Requests whose Host or Origin is not the server's own are refused, and every
    /// change needs the session token embedded in the page it serves.
    Ui(UiArgs),
}

/// Arguments of `ui`.
#[derive(Args, Debug, Clone)]
pub struct UiArgs {
    /// Port on 127.0.0.1 to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Show the FlowRuns of every namespace (default: the one of -n, else of the kubeconfig context).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// Open the URL in the default browser.
    #[arg(long)]
    pub open: bool,
}

/// The `cron` commands.
#[derive(Subcommand, Debug)]
pub enum CronCommand {
    /// List the namespace's CronFlows: schedule, time zone, suspend, active runs, last and next schedule.
    List,

    /// Start one run of a CronFlow now, from its template, whatever its schedule, suspend and
    /// concurrencyPolicy say. The run is named `<cronflow>-manual-<random suffix>` (scheduled runs are named
    /// after their slot, `<cronflow>-<unix seconds>`), labelled `sluice.dev/trigger=Manual` and owned by the
    /// CronFlow, so it counts towards its history limits and goes with it.
    Trigger(CronTarget),
}

/// A CronFlow to act on.
#[derive(Args, Debug, Clone)]
pub struct CronTarget {
    /// Name of the CronFlow.
    pub cronflow: String,
}

/// A FlowRun to act on.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Name of the FlowRun.
    pub flowrun: String,
}

/// Output formats of `status`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFormat {
    /// A tree for people.
    #[default]
    Text,
    /// A stable JSON document for scripts (see the FlowRunReport type).
    Json,
}

/// Arguments of `status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Name of the FlowRun.
    pub flowrun: String,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = StatusFormat::Text)]
    pub output: StatusFormat,
}

/// Arguments of `signal`.
#[derive(Args, Debug, Clone)]
pub struct SignalArgs {
    /// Name of the FlowRun.
    pub flowrun: String,

    /// Name of the signal (the name in the step's waitForSignal).
    pub name: String,

    /// The payload, as JSON (e.g. '{"approved": true}'). Without --data and --file the signal has no payload.
    #[arg(long, conflicts_with = "file")]
    pub data: Option<String>,

    /// Read the JSON payload from this file; `-` reads stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Arguments of `retry`.
#[derive(Args, Debug, Clone)]
pub struct RetryArgs {
    /// Name of the FlowRun.
    pub flowrun: String,

    /// Do not wait for the operator to acknowledge the request.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to wait for the operator to acknowledge, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// Graph formats.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphFormat {
    /// A Mermaid flowchart (renders in GitHub and GitLab Markdown).
    #[default]
    Mermaid,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
}

/// Arguments of `graph`.
#[derive(Args, Debug, Clone)]
pub struct GraphArgs {
    /// Name of the FlowRun.
    pub flowrun: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    pub format: GraphFormat,
}

/// Arguments of `watch`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Name of the FlowRun.
    pub flowrun: String,

    /// Give up after this many seconds (exit code 1); by default wait until the run ends.
    #[arg(long)]
    pub timeout: Option<u64>,
}
