#!/usr/bin/env bash
# Create .venv and install the harness with its test dependencies. Idempotent: skips
# pip when pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    echo "setup-python: need Python >= 3.9 as '$PY' (apt-get install python3 python3-venv)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || {
        echo "setup-python: '$PY -m venv' failed; on Debian: apt-get install python3-venv" >&2
        exit 1
    }
fi
stamp=.venv/.cprh-installed
want=$(cat pyproject.toml scripts/setup-python.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup-python: installing Python dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,avocado]'
    echo "$want" > "$stamp"
fi
