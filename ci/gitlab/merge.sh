#!/usr/bin/env bash
# cprh:merge: every job's results (reports/fleet/runs/, the artifacts of cprh:run) into
# reports/fleet/ (grid, merged matrix, compare, Allure report); the last good night's
# merged results come from, and this night's go to, reports/fleet-baseline/ (a cache).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup-python.sh
mkdir -p reports/fleet/runs
exec .venv/bin/python -m harness fleet merge reports/fleet/runs --out reports/fleet \
    --keep reports/fleet-baseline --history reports/fleet-history
