#!/usr/bin/env bash
# The nightly upgrade/downgrade matrix: fetch each QEMU with get-qemu.sh, then run
# `python -m harness versions` on them (each alone and every ordered pair) and the grid.
# tox -e versions runs this.
#
#   scripts/versions.sh [extra args for `harness versions`, e.g. --reports DIR]
#
# CPRH_VERSIONS: the builds, separated by spaces: a version (fetched or built from
# Debian's archive), or LABEL=PATH for a build of a QEMU source tree or tarball of your
# own (get-qemu.sh LABEL --from PATH). Default: 10.0.2 11.1.3 10.2.2 and the cpr-transfer
# series "rfc-v3=../shared/qemu-src/qemu-cpr-transfer-v3.tar.xz" (PATH relative to the
# repository). 10.2.2 and a tree are built the first time (minutes each). A build that
# cannot be had is left out with get-qemu's one-line reason; fewer than two left is an
# error.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
paths=()
for v in ${CPRH_VERSIONS:-10.0.2 11.1.3 10.2.2 rfc-v3=../shared/qemu-src/qemu-cpr-transfer-v3.tar.xz}; do
    case "$v" in
        *=*) args=("${v%%=*}" --from "${v#*=}") ;;
        *) args=("$v") ;;
    esac
    if p=$(bash scripts/get-qemu.sh "${args[@]}"); then
        paths+=("$p")
    else
        echo "versions: leaving out ${v%%=*} (see the get-qemu line above)" >&2
    fi
done
if [ ${#paths[@]} -lt 2 ]; then
    echo "versions: fewer than two QEMU versions could be had; nothing to compare" >&2
    exit 1
fi
exec "$py" -m harness versions "${paths[@]}" "$@"
