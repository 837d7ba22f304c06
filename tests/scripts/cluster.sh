#!/usr/bin/env bash
# The local cluster for tests and demos: sluice-controlplane (etcd + kube-apiserver +
# kube-controller-manager) plus the process kubelet, both in the background.
#
#   cluster.sh up          build what is needed, start (or reuse) the cluster; the last stdout
#                          line is the kubeconfig path
#   cluster.sh down        stop the kubelet, then the control plane; nothing is left running
#   cluster.sh status      say what runs (exit 0 when the cluster is up, 3 when not)
#   cluster.sh kubeconfig  print the kubeconfig path of the running cluster
#
# State (kubeconfig, pid files, logs, data) lives in ${SLUICE_CLUSTER_DIR:-${TMPDIR:-/tmp}/sluice-cluster}.
# Timeouts: SLUICE_CLUSTER_TIMEOUT (seconds, default 240) bounds each wait of `up`.
# SLUICE_NO_KUBELET=1 runs the control plane alone (no node).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${SLUICE_CLUSTER_DIR:-${TMPDIR:-/tmp}/sluice-cluster}"
TIMEOUT="${SLUICE_CLUSTER_TIMEOUT:-240}"
NODE_NAME="sluice-local"
CARGO="${CARGO:-cargo}"

KUBECONFIG_PATH="$STATE/kubeconfig"
CP_PID="$STATE/controlplane.pid"
CP_LOG="$STATE/controlplane.log"
CP_OUT="$STATE/controlplane.out"
KL_PID="$STATE/kubelet.pid"
KL_LOG="$STATE/kubelet.log"

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }

has_kubelet() { [[ "${SLUICE_NO_KUBELET:-0}" != 1 && -f "$ROOT/tests/kubelet/Cargo.toml" ]]; }
kubelet_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/debug/sluice-kubelet"; }

pid_of() { [[ -s "$1" ]] && cat "$1"; }
# What a pid is now: "ours" (a live sluice- process), "gone" (no such process, or a zombie), or
# "foreign" (the pid was recycled by an unrelated process).
pid_state() {
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null)" || { echo gone; return; }
  if [[ -z "$stat" || "$stat" == Z* ]]; then
    echo gone
  elif tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q sluice-; then
    echo ours
  else
    echo foreign
  fi
}
alive() {
  local pid
  pid="$(pid_of "$1")" || return 1
  [[ "$(pid_state "$pid")" == ours ]]
}

# All the state changes of up/down happen under a lock inside the state dir.
lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w "$TIMEOUT" 9 || die "another cluster.sh holds $STATE/.lock for more than ${TIMEOUT}s"
}

kubectl_bin() { "$ROOT/tests/scripts/install-tools.sh" | tail -n 1; }

apiserver_ready() {
  [[ -s "$KUBECONFIG_PATH" ]] || return 1
  "$(kubectl_bin)/kubectl" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

running() {
  alive "$CP_PID" || return 1
  if has_kubelet; then alive "$KL_PID" || return 1; fi
  apiserver_ready
}

# Stop one process: SIGTERM, a bounded wait, then SIGKILL. Anything left in its session
# (it was started with setsid) is killed too, so that no orphan survives.
stop() {
  local name="$1" pidfile="$2" grace="$3" pid
  pid="$(pid_of "$pidfile")" || { rm -f "$pidfile"; return 0; }
  case "$(pid_state "$pid")" in
    foreign)
      # Nothing of ours is left under that pid.
      rm -f "$pidfile"
      return 0
      ;;
    ours)
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + grace))
      while [[ "$(pid_state "$pid")" == ours ]] && ((SECONDS < deadline)); do
        sleep 0.1
      done
      if [[ "$(pid_state "$pid")" == ours ]]; then
        log "$name did not exit within ${grace}s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while [[ "$(pid_state "$pid")" == ours ]] && ((SECONDS < deadline)); do
          sleep 0.1
        done
      fi
      ;;
  esac
  # It was started with setsid: whatever is left in its session (e.g. pods of a kubelet that
  # died) is ours too.
  local leftovers
  leftovers="$(ps -e -o pid=,sid= | awk -v s="$pid" '$1 != s && $2 == s { print $1 }')"
  if [[ -n "$leftovers" ]]; then
    log "killing processes left in the session of $name: $(echo $leftovers)"
    kill -KILL $leftovers 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# launch PIDFILE OUT ERR COMMAND...: start COMMAND in the background in a session of its own (a
# Ctrl-C in this terminal does not reach it; `stop` sweeps that session), with stdin from
# /dev/null, stdout to OUT, stderr to ERR (or OUT when ERR is empty), and no other descriptor of
# this script (not the lock, not a caller's pipe that would otherwise stay open while it runs).
# The process writes its own pid to PIDFILE, so the pid is right even if setsid has to fork.
launch() {
  local pidfile="$1" out="$2" err="$3"
  shift 3
  rm -f "$pidfile"
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd="${fd##*/}"
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec </dev/null >"$out"
    if [[ -n "$err" ]]; then exec 2>"$err"; else exec 2>&1; fi
    # shellcheck disable=SC2016
    exec setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@"
  ) &
  local deadline=$((SECONDS + 10)) name="$1"
  until [[ -s "$pidfile" ]]; do
    ((SECONDS < deadline)) || die "$name did not start (no pid file $pidfile)"
    sleep 0.05
  done
}

do_down() {
  # The operator `make demo` started in the background (examples/demo.sh), if any.
  stop "operator" "$STATE/operator.pid" 30
  stop "process kubelet" "$KL_PID" 60
  stop "control plane" "$CP_PID" 60
  rm -rf "$STATE/controlplane" "$STATE/kubelet" "$KUBECONFIG_PATH" "$CP_OUT"
}

# Waits until the control plane prints its READY line, dies, or the timeout passes.
wait_ready_line() {
  local pid="$1" line
  coproc TAILER { exec tail -n +1 -F --pid="$pid" "$CP_OUT" 2>/dev/null; }
  local tail_pid=$TAILER_PID
  local deadline=$((SECONDS + TIMEOUT)) ok=1
  while ((SECONDS < deadline)); do
    if IFS= read -r -t $((deadline - SECONDS)) line <&"${TAILER[0]}"; then
      if [[ "$line" == READY\ * ]]; then ok=0; break; fi
    else
      # EOF (the control plane exited) or timeout.
      break
    fi
  done
  kill "$tail_pid" 2>/dev/null || true
  wait "$tail_pid" 2>/dev/null || true
  if ((ok != 0)); then
    if kill -0 "$pid" 2>/dev/null; then
      die "the control plane was not ready within ${TIMEOUT}s; see $CP_LOG"
    fi
    die "the control plane exited before it was ready; see $CP_LOG"
  fi
}

wait_node_ready() {
  local kubectl pid deadline
  kubectl="$(kubectl_bin)/kubectl"
  pid="$(pid_of "$KL_PID")"
  deadline=$((SECONDS + TIMEOUT))
  log "waiting for node $NODE_NAME to be Ready"
  # Short kubectl waits (watches), so that a dead kubelet is noticed quickly.
  until "$kubectl" --kubeconfig "$KUBECONFIG_PATH" wait --for=create "node/$NODE_NAME" --timeout=5s >/dev/null 2>&1 &&
    "$kubectl" --kubeconfig "$KUBECONFIG_PATH" wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "the process kubelet exited before its node was Ready; see $KL_LOG"
    ((SECONDS < deadline)) || die "node $NODE_NAME was not Ready within ${TIMEOUT}s; see $KL_LOG"
  done
}

do_up() {
  if running; then
    log "reusing the running cluster in $STATE"
    echo "$KUBECONFIG_PATH"
    return 0
  fi
  if alive "$CP_PID" || alive "$KL_PID"; then
    log "a partial cluster is running in $STATE; restarting it"
  fi
  do_down
  # A failed start leaves nothing running (the logs stay for a look).
  UP_DONE=0
  trap 'rc=$?; if ((rc != 0 && UP_DONE == 0)); then log "up failed; stopping what it started"; do_down; fi' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local cp_bin
  cp_bin="$("$ROOT/tests/scripts/build-controlplane.sh" | tail -n 1)"
  if has_kubelet; then
    log "building the process kubelet"
    (cd "$ROOT" && "$CARGO" build -q -p sluice-kubelet) >&2 || die "building the process kubelet failed"
  fi
  kubectl_bin >/dev/null

  mkdir -p "$STATE/controlplane"
  : >"$CP_OUT"
  log "starting the control plane (log: $CP_LOG)"
  local start=$SECONDS
  launch "$CP_PID" "$CP_OUT" "$CP_LOG" "$cp_bin" --data-dir "$STATE/controlplane" --kubeconfig "$KUBECONFIG_PATH"
  wait_ready_line "$(cat "$CP_PID")"
  log "control plane ready in $((SECONDS - start))s"

  if has_kubelet; then
    mkdir -p "$STATE/kubelet"
    log "starting the process kubelet (log: $KL_LOG)"
    launch "$KL_PID" "$KL_LOG" "" "$(kubelet_bin)" --kubeconfig "$KUBECONFIG_PATH" --node-name "$NODE_NAME" \
      --images "$ROOT/tests/kubelet/images.yaml" --state-dir "$STATE/kubelet"
    wait_node_ready
    log "node $NODE_NAME Ready"
  else
    log "running without the process kubelet: no node"
  fi
  UP_DONE=1
  echo "$KUBECONFIG_PATH"
}

do_status() {
  if alive "$CP_PID"; then
    log "control plane: running (pid $(pid_of "$CP_PID"), log $CP_LOG)"
  else
    log "control plane: not running"
  fi
  if has_kubelet; then
    if alive "$KL_PID"; then
      log "process kubelet: running (pid $(pid_of "$KL_PID"), log $KL_LOG)"
    else
      log "process kubelet: not running"
    fi
  fi
  if running; then
    echo "running $KUBECONFIG_PATH"
    return 0
  fi
  echo "stopped"
  return 3
}

case "${1:-}" in
  up)
    lock
    do_up
    ;;
  down)
    lock
    do_down
    ;;
  status)
    do_status
    ;;
  kubeconfig)
    running || die "no cluster is running in $STATE (run: $0 up)"
    echo "$KUBECONFIG_PATH"
    ;;
  *)
    echo "usage: $0 up|down|status|kubeconfig" >&2
    exit 2
    ;;
esac
