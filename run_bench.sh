#!/usr/bin/env bash
# Runs the benchmarks (bench/run.py) and, for a full run, rewrites BENCHMARKS.md.
# The first run creates .venv and installs the project with the chart's library.
#   ./run_bench.sh            full run, then BENCHMARKS.md (about 10 minutes)
#   ./run_bench.sh --smoke    small sizes, no thresholds: what CI runs
#   ./run_bench.sh --litellm  adds LiteLLM's proxy as a peer (litellm on PATH,
#                             or --litellm /path/to/litellm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
EXTRAS=bench,local
source "$here/scripts/ensure-venv.sh"
cd "$here"
if [[ " $* " == *" --smoke "* ]]; then
    exec "$venv/bin/python" bench/run.py "$@"
fi
exec "$venv/bin/python" bench/run.py --docs "$@"
