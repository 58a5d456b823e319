#!/usr/bin/env bash
# The nightly upgrade/downgrade matrix: fetch each QEMU version with get-qemu.sh, then
# run `python -m harness versions` on them (each alone and every ordered pair) and the
# grid. tox -e versions runs this.
#
#   scripts/versions.sh [extra args for `harness versions`, e.g. --reports DIR]
#
# CPRH_VERSIONS: the versions (default "10.0.2 11.1.3 10.2.2"; 10.2.2 is built from
# source the first time, ~11 minutes). A version that cannot be fetched is left out with
# get-qemu's one-line reason; fewer than two left is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
paths=()
for v in ${CPRH_VERSIONS:-10.0.2 11.1.3 10.2.2}; do
    if p=$(bash scripts/get-qemu.sh "$v"); then
        paths+=("$p")
    else
        echo "versions: leaving out $v (see the get-qemu line above)" >&2
    fi
done
if [ ${#paths[@]} -lt 2 ]; then
    echo "versions: fewer than two QEMU versions could be had; nothing to compare" >&2
    exit 1
fi
exec "$py" -m harness versions "${paths[@]}" "$@"
