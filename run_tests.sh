#!/usr/bin/env bash
# Runs the whole test suite and the linter. The first run creates .venv and
# installs the project with its test dependencies and the local extra (torch,
# CPU build, and transformers) into it. The tests also start redis-server
# processes of their own, and the console's test a headless Chromium: when one
# is missing, Debian's package is installed (as root), or the script says what
# to install. promtool, which lints /metrics, is taken out of Debian's package
# into .venv/bin.
# Arguments go to pytest, e.g. ./run_tests.sh -k cancel -x
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
EXTRAS=test,local
source "$here/scripts/ensure-venv.sh"
source "$here/scripts/ensure-redis.sh"
source "$here/scripts/ensure-chromium.sh"
source "$here/scripts/ensure-promtool.sh"
cd "$here"
"$venv/bin/ruff" check src tests bench
"$venv/bin/ruff" format --check src tests bench
exec "$venv/bin/python" -m pytest "$@"
