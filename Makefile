# Sluice: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test fmt-check clippy cargo-test crds demo cluster-up cluster-down bench

test: fmt-check clippy cargo-test

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cargo-test:
	$(CARGO) test --workspace

crds:
	$(CARGO) run -q -p sluice-operator -- crd --out-dir crds

demo:
	@echo "make demo is not yet available: it arrives with the end-to-end issue."
