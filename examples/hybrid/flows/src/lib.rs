//! The flows of Sluice's hybrid example, as code: one crate that both the scheduler (which starts runs) and
//! the worker (which serves their steps) depend on, so a step's input, its handler and the flow that wires
//! them together cannot drift apart.
//!
//! Each flow module holds its typed input and output, a function building its [`FlowRunSpec`], the names of
//! its handlers and the handlers themselves: plain async functions of a typed input, with no Sluice types in
//! their signatures, so they are unit-tested like any other function.
//!
//! [`FlowRunSpec`]: sluice_api::FlowRunSpec
#![forbid(unsafe_code)]

pub mod signup;
