//! The custom resources of Sluice (group `sluice.dev`, version `v1alpha1`): the CRD source of truth.
