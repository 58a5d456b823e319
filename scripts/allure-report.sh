#!/usr/bin/env bash
# Build the Allure HTML report, offline, from REPORTS/allure-results:
#   REPORTS/allure-report/       the multi-file report (serve it, or open index.html
#                                through a web server)
#   REPORTS/allure-report.html   the same report as one self-contained file
# Usage: scripts/allure-report.sh [REPORTS]   (default: reports/)
#
# The Allure command line comes from npm (package.json, pinned in package-lock.json),
# installed into node_modules/ with `npm ci` on first use; it runs on Java >= 8.
# History: the previous report's history/ is copied into the results first, so the
# trend graphs grow run after run.
# Exit codes: 0 report built; 3 skipped (java or npm missing, or no results), said in
# one line on stdout; anything else: failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reports=$(realpath -m "${1:-$root/reports}")
results=$reports/allure-results
out=$reports/allure-report
single=$reports/allure-report.html

skip() { echo "allure-report: skipped: $*"; exit 3; }
fail() { echo "allure-report: failed: $*"; exit 1; }

command -v java >/dev/null 2>&1 ||
    skip "java not found (apt-get install openjdk-17-jre-headless); the matrix reports are still written"
[ -d "$results" ] && [ -n "$(ls -A "$results" 2>/dev/null)" ] ||
    skip "no results in $results (run the suite with --alluredir $results)"

allure=$root/node_modules/.bin/allure
stamp=$root/node_modules/.cprh-installed
want=$(sha256sum "$root/package-lock.json" | cut -d' ' -f1)
exec 9<"$root/package-lock.json"   # one npm ci at a time (scripts/setup-node.sh too)
flock -w 600 9 || fail "waited 10 min for another npm ci in $root"
if [ ! -x "$allure" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    command -v npm >/dev/null 2>&1 ||
        skip "npm not found (apt-get install npm); the matrix reports are still written"
    echo "allure-report: installing the Allure command line (npm ci)" >&2
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
        fail "npm ci did not install allure-commandline (is the npm registry reachable?)"
    echo "$want" > "$stamp"
fi
exec 9<&-

if [ -d "$out/history" ]; then
    rm -rf "$results/history"
    cp -r "$out/history" "$results/history"
fi

# An offline report must not phone home: no analytics at generate time, and none of
# the template's tag in the pages (checked below).
export ALLURE_NO_ANALYTICS=true  # read with Boolean.parseBoolean: "1" would not do

tmp=$(mktemp -d "$reports/.allure-single.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$allure" --quiet generate --clean --name "cpr-transfer conformance" -o "$out" "$results" >&2 ||
    fail "allure generate exited $? (see the messages above)"
"$allure" --quiet generate --clean --single-file --name "cpr-transfer conformance" -o "$tmp" "$results" >&2 ||
    fail "allure generate --single-file exited $? (see the messages above)"
mv "$tmp/index.html" "$single"
if grep -q googletagmanager "$single" "$out/index.html"; then
    fail "the report embeds an analytics tag although ALLURE_NO_ANALYTICS is set"
fi
echo "allure-report: $single (one file, opens from disk); $out/ (serve it: node_modules/.bin/allure open $out)"
