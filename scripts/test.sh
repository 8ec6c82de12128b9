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
# Forcing a lower path on this CPU does not show that the build runs on a CPU without the higher
# instructions (an inline function compiled for AVX-512 could be the copy the linker keeps). So
# the kernel tests also run on emulated CPUs: Haswell (AVX2, no AVX-512: QEMU's TCG has no
# AVX-512, so any AVX-512 instruction stops the run) and qemu64 (no AVX: the runtime dispatch
# picks the scalar path; QEMU user mode still executes AVX there, so that run checks the
# dispatch, not the absence of AVX instructions).
for cpu in Haswell qemu64; do
  echo "=== kernel tests on an emulated $cpu CPU ==="
  qemu-x86_64 -cpu $cpu build/fennec_tests --gtest_filter='*Kernel*:*Vec*:*Attention*:*Ops*' 2>&1 \
    | grep -v "TCG doesn't support requested feature" || status=1
done
echo "=== pytest ==="
set +e
.venv/bin/python -m pytest -q tests/py
rc=$?
set -e
# pytest exits 5 when it collects no test: count that as a failure too.
[ $rc -eq 0 ] || status=1
exit $status
