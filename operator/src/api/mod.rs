//! The custom resources of Sluice (group `sluice.dev`, version `v1alpha1`): the CRD source of truth.

mod flowrun;
mod schema;
mod workerpool;

pub use flowrun::*;
pub use schema::DURATION_PATTERN;
pub use workerpool::*;
