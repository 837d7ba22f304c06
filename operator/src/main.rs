#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod run;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The Sluice operator: durable flows on Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "sluice-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: leader election, the FlowRun controllers, the worker broker and the health port.
    Run(Box<run::RunArgs>),
    /// Print the CustomResourceDefinitions of FlowRun and WorkerPool as YAML.
    Crd {
        /// Write one file per CRD (`<plural>.<group>.yaml`) into this directory instead of printing a
        /// multi-document YAML stream to stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { out_dir } => crd(out_dir),
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the async runtime")?;
            let result = runtime.block_on(run::run(*args));
            // Do not wait for stray tasks (long polls, watches) of a process that is leaving.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
    }
}

fn crd(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match out_dir {
        None => {
            print!("{}", sluice_operator::crds::all_yaml()?);
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, yaml) in sluice_operator::crds::files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
