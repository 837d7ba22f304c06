#!/usr/bin/env bash
# `make demo`: the order flow of examples/order-flow.yaml on a local cluster, from a fresh clone.
#
#   1. builds the operator, the example worker (and, through cluster.sh, the control plane and the kubelet)
#   2. starts the local cluster (tests/scripts/cluster.sh up) and installs the CRDs
#   3. starts `sluice-operator run` in the background on loopback (pid and log in the cluster state dir;
#      `make cluster-down` stops it with the cluster)
#   4. starts two example workers (pods of sluice/worker-example:dev, run by the process kubelet)
#   5. applies the order flow, approves it with a signal once it waits, waits for it and prints its status
#
# Environment: SLUICE_DEMO_NAMESPACE (default sluice-demo), SLUICE_DEMO_BROKER_PORT (18481),
# SLUICE_DEMO_HEALTH_PORT (18480), SLUICE_DEMO_WORKERS (`pool`: examples/workerpool.yaml, run by the operator's
# WorkerPool controller; `deployment`: a plain Deployment of the same pods; default: `pool` when the operator
# has a WorkerPool controller, i.e. `run --broker-url`), SLUICE_CLUSTER_DIR (the cluster state dir), CARGO.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${SLUICE_CLUSTER_DIR:-${TMPDIR:-/tmp}/sluice-cluster}"
NS="${SLUICE_DEMO_NAMESPACE:-sluice-demo}"
BROKER_PORT="${SLUICE_DEMO_BROKER_PORT:-18481}"
HEALTH_PORT="${SLUICE_DEMO_HEALTH_PORT:-18480}"
CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
OPERATOR_PID="$STATE/operator.pid"
OPERATOR_LOG="$STATE/operator.log"
FLOW=order-1234

if [[ -t 1 ]]; then
  step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  step() { printf '\n==> %s\n' "$*"; }
fi
die() { echo "demo: error: $*" >&2; exit 1; }
# Shows a command (quoted so that it can be copied), then runs it.
show() {
  local line='$' arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then line+=" $arg"; else line+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  echo "$line"
  "$@"
}

for cmd in curl python3 setsid; do
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required"
done

# The operator's pid file names a live sluice-operator (not a recycled pid).
operator_alive() {
  local pid
  pid="$(cat "$OPERATOR_PID" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q sluice-operator
}

stop_operator() {
  operator_alive || { rm -f "$OPERATOR_PID"; return 0; }
  local pid deadline
  pid="$(cat "$OPERATOR_PID")"
  echo "demo: stopping the operator (pid $pid)" >&2
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$OPERATOR_PID"
}

# On failure or interrupt: show what the operator said, and stop it (the cluster stays for a look).
DONE=0
on_exit() {
  local rc=$?
  if ((DONE == 0)); then
    if [[ -s "$OPERATOR_LOG" ]]; then
      echo "demo: failed (exit $rc); the operator's last log lines ($OPERATOR_LOG):" >&2
      tail -n 30 "$OPERATOR_LOG" >&2 || true
    fi
    stop_operator
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Building the operator and the example worker"
# The same packages as the cluster tests build, so both share one feature resolution (no second build).
"$CARGO" build -q -p sluice-operator -p sluice-example-worker -p sluice-worker --bins

step "Starting the local cluster (control plane + process kubelet)"
KUBECONFIG="$(tests/scripts/cluster.sh up | tail -n 1)"
export KUBECONFIG
KUBECTL_DIR="$(tests/scripts/install-tools.sh | tail -n 1)"
export PATH="$KUBECTL_DIR:$PATH"
echo "kubeconfig: $KUBECONFIG"

step "Installing the CRDs"
"$TARGET/sluice-operator" crd | kubectl apply --server-side --force-conflicts -f -
kubectl wait --for=condition=Established --timeout=60s crd/flowruns.sluice.dev crd/workerpools.sluice.dev

step "Namespace $NS (fresh)"
stop_operator
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s
kubectl create namespace "$NS"
kubectl wait --for=create serviceaccount/default -n "$NS" --timeout=60s

WORKERS="${SLUICE_DEMO_WORKERS:-}"
if [[ -z "$WORKERS" ]]; then
  if "$TARGET/sluice-operator" run --help | grep -q -- --broker-url; then WORKERS=pool; else WORKERS=deployment; fi
fi
POOL_ARGS=()
case "$WORKERS" in
  pool) POOL_ARGS=(--broker-url "http://127.0.0.1:$BROKER_PORT") ;;
  deployment) ;;
  *) die "SLUICE_DEMO_WORKERS must be pool or deployment, not $WORKERS" ;;
esac

step "Starting the operator (sluice-operator run, broker on 127.0.0.1:$BROKER_PORT)"
mkdir -p "$STATE"
# A session of its own (Ctrl-C here does not reach it; cluster.sh down stops it and its session); it writes
# its own pid file so that the pid is right even if setsid forks.
(
  exec </dev/null >"$OPERATOR_LOG" 2>&1
  # shellcheck disable=SC2016
  exec setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$OPERATOR_PID" \
    "$TARGET/sluice-operator" run --namespace "$NS" --lease-namespace "$NS" \
    --broker-addr "127.0.0.1:$BROKER_PORT" --health-addr "127.0.0.1:$HEALTH_PORT" "${POOL_ARGS[@]}"
) 9>&- &
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$HEALTH_PORT/readyz" >/dev/null 2>&1; do
  if [[ -s "$OPERATOR_PID" ]] && ! operator_alive; then die "the operator exited; see $OPERATOR_LOG"; fi
  ((SECONDS < deadline)) || die "the operator was not ready within 60s; see $OPERATOR_LOG"
  sleep 0.3
done
echo "operator ready (pid $(cat "$OPERATOR_PID"), log $OPERATOR_LOG)"

if [[ "$WORKERS" == pool ]]; then
step "The example workers: WorkerPool examples (scaled from zero by queue depth)"
show kubectl apply -n "$NS" -f examples/workerpool.yaml
else
step "Starting the example workers (pool examples, as a plain Deployment)"
# What the WorkerPool controller creates for examples/workerpool.yaml: the broker URL, the pool, and a
# projected token for the broker's audience; the pod label names the pool the token may serve.
kubectl apply -n "$NS" -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: examples-workers
  labels: {sluice.dev/pool: examples}
spec:
  replicas: 2
  selector:
    matchLabels: {sluice.dev/pool: examples}
  template:
    metadata:
      labels: {sluice.dev/pool: examples}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: worker
        image: sluice/worker-example:dev
        env:
        - {name: SLUICE_BROKER_URL, value: "http://127.0.0.1:$BROKER_PORT"}
        - {name: SLUICE_POOL, value: examples}
        - {name: SLUICE_CONCURRENCY, value: "4"}
        - {name: SLUICE_TOKEN_PATH, value: /var/run/secrets/sluice/token}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        volumeMounts:
        - {name: sluice-broker-token, mountPath: /var/run/secrets/sluice, readOnly: true}
      volumes:
      - name: sluice-broker-token
        projected:
          sources:
          - serviceAccountToken: {audience: sluice-broker, expirationSeconds: 3600, path: token}
EOF
kubectl rollout status deployment/examples-workers -n "$NS" --timeout=120s
fi

step "Running the order flow (examples/order-flow.yaml)"
show kubectl apply -n "$NS" -f examples/order-flow.yaml
kubectl wait "flowrun/$FLOW" -n "$NS" --for=jsonpath='{.status.steps.approval.phase}'=Waiting --timeout=120s
kubectl get "flowrun/$FLOW" -n "$NS"

step "The manager approves"
show kubectl patch flowrun "$FLOW" -n "$NS" --subresource=status --type=merge \
  -p '{"status":{"signals":{"manager-approval":{"payload":{"approved":true}}}}}'

step "Waiting for the flow (a 30 s cooling-off follows the approval)"
if ! kubectl wait "flowrun/$FLOW" -n "$NS" --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s; then
  kubectl get "flowrun/$FLOW" -n "$NS" -o jsonpath='{.status}' | python3 -m json.tool >&2 || true
  die "the flow did not succeed within 180s"
fi

step "FlowRun $FLOW"
kubectl get "flowrun/$FLOW" -n "$NS"
echo
echo "phase:  $(kubectl get "flowrun/$FLOW" -n "$NS" -o jsonpath='{.status.phase}')"
echo "steps:"
kubectl get "flowrun/$FLOW" -n "$NS" -o json | python3 -c '
import json, sys
status = json.load(sys.stdin)["status"]
for name, st in status["steps"].items():
    extra = []
    if "attempts" in st: extra.append("attempts %d" % st["attempts"])
    if "worker" in st: extra.append("worker " + st["worker"])
    if "instances" in st: extra.append("%d/%d instances" % (st["instances"].get("succeeded", 0), st["instances"]["total"]))
    print("  %-12s %-10s %s" % (name, st["phase"], ", ".join(extra)))
    if "output" in st: print("  %-12s output %s" % ("", json.dumps(st["output"])))
print("output:")
print(json.dumps(status.get("output"), indent=2))
'

if [[ "$WORKERS" == pool ]]; then
  echo
  kubectl get workerpool,deployments,pods -n "$NS"
fi

DONE=1
cat <<EOF

The cluster, the operator and the workers keep running. Look around:
  export KUBECONFIG=$KUBECONFIG PATH=$KUBECTL_DIR:\$PATH
  kubectl -n $NS get flowruns
  kubectl -n $NS apply -f examples/fanout-flow.yaml -f examples/job-pool.yaml
Operator log: $OPERATOR_LOG. Stop everything with: make cluster-down
EOF
