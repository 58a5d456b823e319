#!/usr/bin/env bash
# The QEMU builds of a fleet job, on this host: scripts/get-qemu.sh VERSION for each,
# with GitLab's cache as a second home for them.
#
#   ci/gitlab/qemu.sh [--save] VERSION...
#
# For each VERSION: when the host's get-qemu cache (CPRH_QEMU_CACHE, else
# ~/.cache/cpr-harness/qemu) lacks it and GitLab restored .cprh-qemu-cache/VERSION.tar,
# unpack that; then get-qemu.sh VERSION (a cache hit takes under a second), bounded by
# CPRH_FETCH_TIMEOUT seconds (default 1800). --save: afterwards pack the build into
# .cprh-qemu-cache/VERSION.tar for GitLab's cache (the cprh:prepare job). The build
# holds absolute paths, so a tarball serves the hosts whose CPRH_QEMU_CACHE is the same
# path; elsewhere get-qemu sees its stamp does not run and fetches afresh.
#
# Exit: 0 ready; 2 bad input (no version, one get-qemu does not know); 75 a failure a
# retry may cure (the fetch timed out, the archive could not be reached); 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf 'qemu: %s\n' "$*" >&2; }

save=0
if [ "${1:-}" = --save ]; then save=1; shift; fi
[ $# -gt 0 ] || { say "name a QEMU version (e.g. 11.1.3)"; exit 2; }
CACHE=${CPRH_QEMU_CACHE:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/cpr-harness/qemu}
TARS=.cprh-qemu-cache
LIMIT=${CPRH_FETCH_TIMEOUT:-1800}
[[ "$LIMIT" =~ ^[0-9]+$ ]] && [ "$LIMIT" -gt 0 ] ||
    { say "CPRH_FETCH_TIMEOUT '$LIMIT': expected whole seconds > 0"; exit 2; }
err=$(mktemp)
out=$(mktemp)
trap 'rm -f "$err" "$out"' EXIT

has_stamp() { ls "$CACHE/$1"/*/stamp >/dev/null 2>&1; }

for v in "$@"; do
    [ -n "$v" ] || { say "an empty QEMU version: the matrix entry must name one (e.g. 11.1.3)"; exit 2; }
    tar=$TARS/$v.tar
    if [ -s "$tar" ] && ! has_stamp "$v"; then
        say "QEMU $v: unpacking GitLab's cached build into $CACHE"
        mkdir -p "$CACHE"
        tar -C "$CACHE" -xf "$tar" || say "QEMU $v: the cached tarball does not unpack; fetching instead"
    fi
    # get-qemu's messages go to the job's log as they come and into $err; a pipeline
    # (not a process substitution, which nothing waits for) so $err is whole when read.
    set +e
    timeout -k 30 "$LIMIT" bash scripts/get-qemu.sh "$v" 2>&1 >"$out" | tee "$err" >&2
    rc=${PIPESTATUS[0]}
    set -e
    path=$(cat "$out")
    if [ "$rc" -ne 0 ]; then
        why=$(grep '^get-qemu:' "$err" | tail -n1 | sed 's/^get-qemu: //' || true)
        case "$rc:$why" in
            124:*|137:*) say "QEMU $v: the fetch took over ${LIMIT} s (CPRH_FETCH_TIMEOUT): an infrastructure failure, retried"; exit 75 ;;
            *"cannot reach"*|*"waited 2 h for the lock"*) say "QEMU $v: $why (retried)"; exit 75 ;;
            2:*|*"no QEMU "*) say "QEMU $v: $why"; exit 2 ;;
            *) say "QEMU $v: ${why:-get-qemu exited $rc}"; exit 1 ;;
        esac
    fi
    say "QEMU $v: $path"
    case "$path" in
        "$CACHE"/*) ;;
        *) [ "$save" = 0 ] || say "QEMU $v is the host's own ($path): nothing for GitLab's cache"; continue ;;
    esac
    if [ "$save" = 1 ]; then
        stamp=$(ls -t "$CACHE/$v"/*/stamp | head -n1)
        if [ ! -s "$tar" ] || [ "$stamp" -nt "$tar" ]; then
            mkdir -p "$TARS"
            tar -C "$CACHE" -cf "$tar.tmp" --exclude="$v/*/build" --exclude='*.deb' "$v"
            mv "$tar.tmp" "$tar"
            say "QEMU $v: packed for GitLab's cache ($(du -m "$tar" | cut -f1) MB)"
        else
            say "QEMU $v: GitLab's cache already holds this build"
        fi
    fi
done
