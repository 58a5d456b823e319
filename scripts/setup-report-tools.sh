#!/usr/bin/env bash
# What the report self-tests read the pages with: Debian's chromium (headless) and a Java
# runtime for the Allure command line (openjdk-17-jre-headless; the command line itself
# comes from npm, scripts/allure-report.sh). suites/selftest/test_report_pages.py loads
# conformance.html, a case's page and the Allure single file in chromium and fails on a
# dead link, a Python word or a clipped note. Run by `./run tests` (so CI runs those
# tests too). Idempotent: nothing to do when both are there. As another user than root
# it installs nothing and says what to install, in one line.
set -euo pipefail

say() { printf 'setup-report-tools: %s\n' "$*" >&2; }

have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
have_java() { command -v java >/dev/null 2>&1; }

want=()
have_chromium || want+=(chromium)
have_java || want+=(openjdk-17-jre-headless)
[ ${#want[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${want[*]} and not root (or no apt-get): install them (apt-get install ${want[*]}); the page self-tests fail without them"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
say "installing ${want[*]} (the report self-tests read the pages with them)"
# The package lists may be old or empty on a fresh machine: update once if the first try fails.
if ! apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null ||
        { say "apt-get install ${want[*]} failed"; exit 1; }
fi
have_chromium || { say "chromium installed but not on PATH"; exit 1; }
have_java || { say "java installed but not on PATH"; exit 1; }
say "ready: $(chromium --version 2>/dev/null | head -n1); $(java -version 2>&1 | head -n1)"
