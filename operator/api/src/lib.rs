//! The custom resources of Sluice (group `sluice.dev`, version `v1alpha1`: FlowRun, FlowTemplate, WorkerPool, CronFlow): the CRD source of truth, shared by
//! the operator and the kubectl plugin. Types and schemas only: no client, no controller code.
#![forbid(unsafe_code)]

pub mod crds;

mod cronflow;
mod flowrun;
mod flowtemplate;
mod schema;
mod workerpool;

pub use cronflow::*;
pub use flowrun::*;
pub use flowtemplate::*;
pub use schema::DURATION_PATTERN;
pub use workerpool::*;
