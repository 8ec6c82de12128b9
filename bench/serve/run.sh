#!/usr/bin/env bash
# fennec serve vs llama-server, one run. Thin wrapper over compare.py (all options pass through):
#   LLAMA_SERVER=/path/to/llama-server bench/serve/run.sh [--threads 2] [--concurrency 1,4,16,32,64]
# compare.py starts both servers, benchmarks them and stops them on exit (Ctrl-C included).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$py" ]; then py="$(command -v python3)"; fi
exec "$py" "$here/compare.py" "$@"
