#!/usr/bin/env bash
# Build the local control plane (tests/controlplane) into the user's cache dir.
# Idempotent: a fast no-op when the binary is newer than every source file, go.mod and go.sum.
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

stale() {
  [[ -x "$BIN" ]] || return 0
  [[ -n "$(find "$SRC" "$SCRIPT" -newer "$BIN" -type f \
      \( -name '*.go' -o -name go.mod -o -name go.sum -o -name "$(basename "$SCRIPT")" \) \
      -print -quit)" ]]
}

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

mkdir -p "$(dirname "$BIN")"
echo "build-controlplane: building sluice-controlplane (Kubernetes $KVER) (a cold build takes several minutes)" >&2
start=$SECONDS
(cd "$SRC" && go build -buildvcs=false -trimpath -ldflags="$LDFLAGS" -o "$BIN.tmp" .)
mv -f "$BIN.tmp" "$BIN"
echo "build-controlplane: built in $((SECONDS - start))s" >&2
echo "$BIN"
