#!/usr/bin/env bash
# What the process kubelet runs for the image `sluice/worker-python:dev` (tests/kubelet/images.yaml): the
# stand-in of a Python worker image, i.e. the project's Python venv (tests/scripts/python-venv.sh) running
# the container's args. A relative script path in the args is taken from the repository root.
#
# A pod's process gets a clean environment (its HOME is the pod's work dir), so the venv is found through
# $SLUICE_PYTHON_VENV when the pod sets it, else at its default place in the home of the user running the
# kubelet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
home="$(getent passwd "$(id -u)" | cut -d: -f6)"
VENV="${SLUICE_PYTHON_VENV:-${home:-/root}/.cache/sluice/python-venv}"
[[ -x "$VENV/bin/python" ]] || {
  echo "python-image: no venv at $VENV: run tests/scripts/python-venv.sh first" >&2
  exit 127
}
args=()
for arg in "$@"; do
  if [[ "$arg" == *.py && "$arg" != /* && ! -e "$arg" && -e "$ROOT/$arg" ]]; then
    arg="$ROOT/$arg"
  fi
  args+=("$arg")
done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" "${args[@]}"
