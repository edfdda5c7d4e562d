#!/usr/bin/env bash
# Runs the whole test suite and the linter. The first run creates .venv and
# installs the project with its test dependencies and the local extra (torch,
# CPU build, and transformers) into it.
# Arguments go to pytest, e.g. ./run_tests.sh -k cancel -x
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
EXTRAS=test,local
source "$here/scripts/ensure-venv.sh"
cd "$here"
"$venv/bin/ruff" check src tests bench
"$venv/bin/ruff" format --check src tests bench
exec "$venv/bin/python" -m pytest "$@"
