//! The worker <-> broker wire protocol: request and response bodies, serde only.
#![forbid(unsafe_code)]
