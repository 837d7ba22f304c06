//! The Sluice worker SDK.
#![forbid(unsafe_code)]
