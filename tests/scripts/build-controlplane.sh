#!/usr/bin/env bash
# Build the local control plane (tests/controlplane) into the user's cache dir.
# Idempotent: a fast no-op when the binary was built from the current sources, go.mod and go.sum.
# The Go build and module caches live in the cache dir too, never in the repo.
# Prints the binary path as the last line of stdout.
set -euo pipefail

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT")/../.." && pwd)"
SRC="$ROOT/tests/controlplane"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sluice"
BIN="$CACHE/bin/sluice-controlplane"
export GOCACHE="$CACHE/go-build"
export GOMODCACHE="$CACHE/go-mod"

# The binary is current when it exists and was built from exactly these sources (a content hash
# of the Go files, go.mod, go.sum and this script, so several checkouts can share the cache).
sources_hash() {
  (cd "$SRC" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 | sort -z |
    xargs -0 sha256sum && sha256sum <"$SCRIPT") | sha256sum | cut -d' ' -f1
}
HASH="$(sources_hash)"
stale() {
  [[ -x "$BIN" && "$(cat "$BIN.sources" 2>/dev/null)" == "$HASH" ]] && return 1
  return 0
}

if ! stale; then
  echo "$BIN"
  exit 0
fi

# One build at a time (parallel test runs share the cache); the winner's binary serves the rest.
mkdir -p "$(dirname "$BIN")"
exec 9>"$(dirname "$BIN")/.build.lock"
flock -w 3600 9 || { echo "build-controlplane: timed out waiting for another build" >&2; exit 1; }
if ! stale; then
  echo "$BIN"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-controlplane: 'go' is not on PATH; install Go (see tests/controlplane/go.mod for the version)" >&2
  exit 1
fi

# Stamp the Kubernetes version into the binary so that clients (kubectl, helm) see a real
# server version instead of v0.0.0-master.
KVER="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$SRC/go.mod")"
KMINOR="$(echo "$KVER" | cut -d. -f2)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $pkg.gitVersion=$KVER -X $pkg.gitMajor=1 -X $pkg.gitMinor=$KMINOR -X $pkg.gitTreeState=clean"
done

echo "build-controlplane: building sluice-controlplane (Kubernetes $KVER) (a cold build takes several minutes)" >&2
start=$SECONDS
(cd "$SRC" && go build -buildvcs=false -trimpath -ldflags="$LDFLAGS" -o "$BIN.tmp.$$" .)
# A rename, so that running control planes keep their (old) binary intact.
mv -f "$BIN.tmp.$$" "$BIN"
echo "$HASH" >"$BIN.sources"
echo "build-controlplane: built in $((SECONDS - start))s" >&2
echo "$BIN"
