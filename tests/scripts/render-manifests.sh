#!/usr/bin/env bash
# Render deploy/sluice.yaml, the plain manifests for `kubectl apply -f` users, from charts/sluice with its
# default values (release `sluice` in namespace `sluice-system`), the CRDs included, after a Namespace that
# enforces the restricted Pod Security Standard.
#
#   render-manifests.sh           write deploy/sluice.yaml
#   render-manifests.sh --stdout  print what it would write (the drift test compares it with the file)
#
# helm comes from install-tools.sh (cached after the first run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/deploy/sluice.yaml"
RELEASE="sluice"
NAMESPACE="sluice-system"

helm="$("$ROOT/tests/scripts/install-tools.sh" | tail -n 1)/helm"

render() {
  cat <<HEADER
# Sluice: the operator, its RBAC and Services, and the FlowRun and WorkerPool CRDs, for \`kubectl apply\`:
#
#   kubectl apply --server-side -f deploy/sluice.yaml
#
# Generated from charts/sluice (default values, release "$RELEASE", namespace "$NAMESPACE") by
# \`make manifests\` (part of \`make crds\`); do not edit. To change anything, install the chart instead:
#
#   helm install $RELEASE charts/sluice --namespace $NAMESPACE --create-namespace
---
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
HEADER
  # Relative chart path: the output names no directory of this machine.
  (cd "$ROOT" && "$helm" template "$RELEASE" charts/sluice --namespace "$NAMESPACE" --include-crds)
}

case "${1:-}" in
  --stdout) render ;;
  "")
    tmp="$(mktemp "$OUT.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    render >"$tmp"
    mv -f "$tmp" "$OUT"
    echo "wrote deploy/sluice.yaml" >&2
    ;;
  *) echo "usage: $0 [--stdout]" >&2; exit 2 ;;
esac
