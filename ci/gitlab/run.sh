#!/usr/bin/env bash
# cprh:run: one matrix entry (CPRH_HOST_CLASS, CPRH_SRC, CPRH_DST, CPRH_ACCEL) on this
# host, into reports/fleet/runs/<host class>/<run>/ (python -m harness fleet job).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup-host.sh
bash scripts/setup-python.sh
py=.venv/bin/python
"$py" -m harness fleet job --dry-run          # a bad entry: one line, exit 2, before any fetch
bash ci/gitlab/qemu.sh "$CPRH_SRC" "${CPRH_DST:-$CPRH_SRC}"
exec "$py" -m harness fleet job
