#!/usr/bin/env bash
# Headless Chromium and ChromeDriver for the web view's browser tests (kubectl-sluice/tests/ui.rs), from
# Debian's packages (chromium, chromium-driver), installed with apt-get when missing. Idempotent.
# Prints the chromedriver path as the last line of stdout.
set -euo pipefail

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if ! have; then
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if sudo -n true 2>/dev/null; then sudo=(sudo -n); else
      echo "install-browser: chromium is missing and packages cannot be installed here: apt-get install chromium chromium-driver" >&2
      exit 1
    fi
  fi
  echo "install-browser: installing chromium and chromium-driver with apt-get" >&2
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >&2; then
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >&2
  fi
fi
have || { echo "install-browser: chromium or chromedriver still missing after apt-get" >&2; exit 1; }
command -v chromedriver
