# Sourced by run.sh and run_tests.sh: makes .venv (or $LLM_WORKER_VENV) hold an
# up-to-date install of this checkout with the extras in $EXTRAS, creating it on
# first use. Needs only Python 3.11+ ($PYTHON, default python3).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LLM_WORKER_VENV:-$root/.venv}
python=${PYTHON:-python3}
extras=${EXTRAS:-}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "llm-worker needs Python 3.11 or newer; set PYTHON to one (found: $("$python" --version 2>&1 || echo none))" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating a virtual environment in $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

# The local extra needs torch: install the CPU build first, so that nothing pulls a
# multi-GB CUDA build (on these machines pip takes torch 2.13.0+cpu from the disk).
if [[ ",$extras," == *",local,"* ]] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "installing torch ${TORCH_VERSION:-2.13.0} (CPU build) into $venv" >&2
    "$venv/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
fi

# Reinstall only when the project's metadata or the wanted extras changed.
stamp="$venv/.llm-worker-installed${extras:+-$extras}"
want=$(sha256sum < "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing llm-worker${extras:+[$extras]} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --editable "$root${extras:+[$extras]}"
    echo "$want" > "$stamp"
fi
