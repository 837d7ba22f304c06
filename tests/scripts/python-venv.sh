#!/usr/bin/env bash
# The Python environment of the project: a virtual environment OUTSIDE the repository with the hash-pinned
# packages of worker-image/python/requirements.lock (from the package index only: no local wheel dirs) and
# the Sluice Python package (worker-image/python) installed into it.
#
#   tests/scripts/python-venv.sh   create or refresh the venv; the last stdout line is its directory
#
# Idempotent and cheap when nothing changed: the venv is rebuilt when the lock file or the Python version
# changes, the package is reinstalled when its sources change. Safe to run concurrently (a lock file).
# Location: $SLUICE_PYTHON_VENV, else ${XDG_CACHE_HOME:-$HOME/.cache}/sluice/python-venv. Interpreter:
# $SLUICE_PYTHON, else python3 (3.10 or newer).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PKG="$ROOT/worker-image/python"
LOCK="$PKG/requirements.lock"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/sluice"
VENV="${SLUICE_PYTHON_VENV:-$CACHE/python-venv}"
PYTHON="${SLUICE_PYTHON:-python3}"

log() { echo "python-venv: $*" >&2; }
die() { echo "python-venv: error: $*" >&2; exit 1; }

case "$VENV" in
  "$ROOT"|"$ROOT"/*) die "the venv must live outside the repository, not in $VENV" ;;
esac
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' is required (Python 3.10 or newer)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PYTHON" --version 2>&1) is too old: Python 3.10 or newer is required"

# Packages come from the index alone, whatever pip's environment says about extra wheel directories.
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_NO_INDEX
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

mkdir -p "$(dirname "$VENV")"
exec 8>"$VENV.lock"
flock -w 600 8 || die "another python-venv.sh holds $VENV.lock for more than 600s"

deps_stamp="$( { sha256sum "$LOCK" | cut -d' ' -f1; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.deps" 2>/dev/null)" != "$deps_stamp" ]]; then
  log "creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  log "installing the pinned packages of $(basename "$LOCK")"
  "$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$LOCK" >&2
  echo "$deps_stamp" >"$VENV/.deps"
  rm -f "$VENV/.package"
fi

# The package itself: reinstalled (without touching its dependencies) when its sources change.
pkg_stamp="$(cd "$PKG" && find pyproject.toml README.md src -type f ! -name '*.pyc' -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$VENV/.package" 2>/dev/null)" != "$pkg_stamp" ]]; then
  log "installing the sluice package from $PKG"
  build="$(mktemp -d "${TMPDIR:-/tmp}/sluice-python-build.XXXXXX")"
  trap 'rm -rf "$build"' EXIT
  # A copy, so that the build's own files (build/, *.egg-info) never land in the work tree.
  cp -r "$PKG/pyproject.toml" "$PKG/README.md" "$PKG/src" "$build/"
  "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --no-index --force-reinstall "$build" >&2
  echo "$pkg_stamp" >"$VENV/.package"
fi
echo "$VENV"
