#!/usr/bin/env bash
# The fleet pipeline on this machine: .gitlab-ci.yml (with ci/gitlab/cpr-harness.yml) run
# by gitlab-ci-local with the shell executor (tox -e gitlab; docs/fleet.md).
#
#   scripts/gitlab-local.sh [extra gitlab-ci-local args]
#
# Each job runs as GitLab would run it: in its own copy of the tracked files
# (--shell-isolation, under .gitlab-ci-local/builds/), artifacts handed from cprh:run to
# cprh:merge, caches kept between pipelines in .gitlab-ci-local/cache/ (the QEMU builds,
# the last good night's merged results, Allure's history). One job at a time
# (--concurrency 1): the runs measure guest pauses, and two at once on 2 cores would
# judge the host, not QEMU. What gitlab-ci-local cannot emulate, and the stand-in:
#   runner tags   every job runs here, whatever its host class (fleet.json and the grid
#                 say "gitlab-ci-local on this machine")
#   timeout, retry  not enforced by gitlab-ci-local; the harness's own deadlines hold
# The pipeline's variables come from the environment where set (CPRH_SUITES,
# CPRH_OBSERVE_S, CPRH_FLEET_ACCEPT, ...). Afterwards the merge job's results are copied
# to reports/fleet/ (grid.html, grid.md, merged.json, regressions.md, the Allure report,
# runs/), the jobs' build copies are removed; exit status: the pipeline's.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'gitlab-local: %s\n' "$*" >&2; }
t0=$(date +%s)

bash scripts/setup-host.sh
nodedir=$(bash scripts/setup-node.sh)
export PATH=$nodedir:$PATH
for tool in git rsync; do
    command -v "$tool" >/dev/null ||
        { say "$tool not found (scripts/setup-host.sh installs it as root)"; exit 1; }
done
git rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
    { say "not a git work tree: gitlab-ci-local copies the tracked files into each job"; exit 1; }

state=.gitlab-ci-local
rm -rf "$state/builds" "$state/artifacts" "$state/output"   # $state/cache/ stays: GitLab's cache
vars=(--variable CPRH_FLEET=1 --variable CPRH_FLEET_LOCAL=1)
for name in CPRH_SUITES CPRH_SCENARIOS CPRH_OBSERVE_S CPRH_MAX_PAUSE_MS CPRH_CASE_TIMEOUT \
        CPRH_SLOW CPRH_SOAK_HOPS CPRH_JOBS CPRH_FETCH_TIMEOUT CPRH_FLEET_ACCEPT \
        CPRH_FLEET_BASELINE CPRH_QEMU_CACHE; do
    if [ -n "${!name+x}" ]; then vars+=(--variable "$name=${!name}"); fi
done
say "running .gitlab-ci.yml with gitlab-ci-local $(node_modules/.bin/gitlab-ci-local --version) (shell executor, one job at a time)"
set +e
node_modules/.bin/gitlab-ci-local --file .gitlab-ci.yml --shell-isolation --concurrency 1 \
    --no-artifacts-to-source --timestamps --color=false "${vars[@]}" "$@"
rc=$?
set -e

merged=$(ls -d "$state"/artifacts/cprh*merge/reports/fleet 2>/dev/null | head -n1 || true)
if [ -n "$merged" ]; then
    rm -rf reports/fleet
    mkdir -p reports
    cp -a "$merged" reports/fleet
fi
rm -rf "$state/builds"   # a Python venv per job (~250 MB each)
wall=$(( $(date +%s) - t0 ))
if [ -n "$merged" ] && [ -f reports/fleet/grid.html ]; then
    say "reports/fleet/grid.html, grid.md, merged.json$( [ -f reports/fleet/regressions.md ] && echo ', regressions.md'); job logs: $state/output/"
else
    say "the merge job left no grid (job logs: $state/output/)"
fi
say "pipeline exit $rc in ${wall} s"
exit "$rc"
