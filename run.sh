#!/usr/bin/env bash
# Starts the worker: gateway and worker in one process, jobs in llm-worker.db
# (SQLite) in this directory; STORE_URL in .env or the environment says otherwise.
# The first run creates .venv and installs the project into it.
# Arguments go to `llm-worker serve`, e.g. ./run.sh --port 9000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
EXTRAS=${EXTRAS:-yaml}
source "$here/scripts/ensure-venv.sh"
cd "$here"
# A first run answers with nothing else started: the echo provider stands in while no
# real provider is configured, unless ECHO_PROVIDER says otherwise.
exec "$venv/bin/llm-worker" serve --echo-when-unconfigured "$@"
