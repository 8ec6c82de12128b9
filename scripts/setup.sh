#!/usr/bin/env bash
# One-time set-up on a fresh Debian bookworm machine: system packages, the project venv,
# the models, and a release build at build/fennec.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs="build-essential cmake ninja-build pkg-config python3-venv libgtest-dev libbenchmark-dev \
nlohmann-json3-dev libpcre2-dev libcli11-dev libboost-dev qemu-user"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r scripts/requirements.txt
bash scripts/fetch_models.sh
cmake --preset release >/dev/null
cmake --build --preset release
