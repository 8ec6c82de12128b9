#!/usr/bin/env bash
# Runs every test: set-up (packages, venv, models, release build), the GoogleTest suite through
# CTest (once on the best SIMD path, then the kernel tests on each lower path), and the Python
# tests against the built CLI. Exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
status=0
echo "=== ctest (best SIMD path) ==="
ctest --test-dir build --output-on-failure -j2 --timeout 1800 || status=1
for level in avx2 scalar; do
  echo "=== ctest kernel tests (FENNEC_CPU=$level) ==="
  FENNEC_CPU=$level ctest --test-dir build --output-on-failure -j2 -R 'Kernel|Vec|Attention|Ops' || status=1
done
echo "=== pytest ==="
set +e
.venv/bin/python -m pytest -q tests/py
rc=$?
set -e
# pytest exits 5 when it collects no test: count that as a failure too.
[ $rc -eq 0 ] || status=1
exit $status
