#!/usr/bin/env bash
# Run a command against the local cluster:  with-cluster.sh <command> [args...]
# Brings the cluster up (or reuses a running one), exports SLUICE_KUBECONFIG and KUBECONFIG,
# puts kubectl and helm on PATH, runs the command and, if this script started the cluster,
# always tears it down again. Exits with the command's exit code.
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
(($# > 0)) || { echo "usage: $0 <command> [args...]" >&2; exit 2; }

started=0
teardown() {
  if ((started)); then
    started=0
    "$SCRIPTS/cluster.sh" down || echo "with-cluster: cluster.sh down failed" >&2
  fi
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! "$SCRIPTS/cluster.sh" status >/dev/null 2>&1; then
  started=1
fi
kubeconfig="$("$SCRIPTS/cluster.sh" up | tail -n 1)"
tools="$("$SCRIPTS/install-tools.sh" | tail -n 1)"

export SLUICE_KUBECONFIG="$kubeconfig" KUBECONFIG="$kubeconfig" PATH="$tools:$PATH"
set +e
"$@"
rc=$?
set -e
exit "$rc"
