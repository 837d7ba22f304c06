#!/usr/bin/env bash
# The unit tests of the Python package (worker-image/python/tests, no cluster): makes or refreshes the venv
# (python-venv.sh) and runs pytest in it. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$("$ROOT/tests/scripts/python-venv.sh" | tail -n 1)"
cd "$ROOT/worker-image/python"
# No cache dir in the work tree, no bytecode next to the sources.
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
