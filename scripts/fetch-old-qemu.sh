#!/usr/bin/env bash
# Fetch Debian 12 (bookworm)'s own QEMU 7.2 -- which has no cpr-transfer -- into DIR,
# without installing it, and print the path of DIR/usr/bin/qemu-system-x86_64.
#
#   scripts/fetch-old-qemu.sh DIR
#
# The harness's self-tests use it to check that the capability probe reports an old
# QEMU as NOT supporting cpr-transfer. Idempotent: a DIR that already holds a working
# 7.2 is left alone.
#
# What it does:
#  - picks the highest 1:7.2* version of qemu-system-x86 that apt knows (apt's candidate
#    is 10.0.2 from bookworm-backports, so the version is named explicitly); override
#    with OLD_QEMU_VERSION=1:7.2+dfsg-...;
#  - `apt-get download`s qemu-system-x86 and qemu-system-common of that version in a
#    temporary directory and unpacks with dpkg-deb: all of qemu-system-x86, and only the
#    TCG accelerator modules (usr/lib/x86_64-linux-gnu/qemu/accel-tcg-*.so) of
#    qemu-system-common. Debian's 7.2 loads TCG as a module; without it even
#    `-machine none` dies with "could not load module for type 'tcg-accel-ops'". QEMU
#    finds the module relative to its own binary, so nothing needs QEMU_MODULE_DIR. The
#    other modules are left out on purpose: qom-list-types loads every module, and the
#    display ones want libraries (libepoxy...) that a headless host does not have;
#  - checks with ldd that every shared library resolves; missing ones are installed
#    from the package's own Depends (plain bookworm lib* packages) when run as root,
#    named and reported otherwise;
#  - checks that the binary runs `--version` and answers QMP with `-machine none`.
#
# Firmware (qemu-system-data, seabios) is not fetched: with -machine none none is read.
# For a real guest pass `-L DIR/usr/share/qemu` after fetching those too.
#
# Exit 0 and the path on stdout; otherwise exit non-zero with one line on stderr that
# starts "fetch-old-qemu: " and says why (the self-tests skip with that line).
set -euo pipefail

PKG=qemu-system-x86
COMMON=qemu-system-common
MODDIR=usr/lib/x86_64-linux-gnu/qemu

say() { printf 'fetch-old-qemu: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1" || die "cannot create $1"
DIR=$(cd "$1" && pwd)
BIN="$DIR/usr/bin/qemu-system-x86_64"
STAMP="$DIR/.fetched-version"

# A QMP round trip: greeting, capabilities, quit. Proves the binary starts for real.
qmp_ok() {
    local out
    out=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' |
          timeout 20 "$BIN" -no-user-config -machine none -nodefaults -display none \
              -qmp stdio 2>&1) || { printf '%s\n' "$out" | tail -n 3 >&2; return 1; }
    case "$out" in *'"QMP"'*'"return": {}'*) return 0 ;; esac
    printf '%s\n' "$out" | tail -n 3 >&2
    return 1
}

version_ok() {
    local v
    v=$(timeout 20 "$BIN" --version 2>/dev/null | head -n1) || return 1
    case "$v" in "QEMU emulator version 7.2"*) return 0 ;; esac
    return 1
}

if [ -x "$BIN" ] && [ -s "$STAMP" ] && version_ok && qmp_ok 2>/dev/null; then
    say "already there: $(cat "$STAMP")"
    printf '%s\n' "$BIN"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    die "needs apt-get and dpkg-deb (Debian); this host has neither"

pick_version() {   # highest 1:7.2* version apt knows for package $1
    local best="" v
    for v in $(apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}'); do
        case "$v" in 1:7.2*|7.2*) ;; *) continue ;; esac
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
    done
    printf '%s' "$best"
}

VERSION=${OLD_QEMU_VERSION:-$(pick_version "$PKG")}
if [ -z "$VERSION" ] && [ "$(id -u)" -eq 0 ]; then
    say "apt knows no 7.2 version of $PKG; running apt-get update"
    apt-get update -qq >/dev/null 2>&1 || true
    VERSION=$(pick_version "$PKG")
fi
[ -n "$VERSION" ] || die "apt knows no 7.2 version of $PKG (is bookworm in apt's sources, and has 'apt-get update' run?)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/apt.log"

download() {  # package version
    (cd "$WORK" && apt-get download "$1=$2" >>"$LOG" 2>&1)
}

say "downloading $PKG=$VERSION"
download "$PKG" "$VERSION" ||
    die "apt-get download $PKG=$VERSION failed: $(grep -E '^(E|Err):' "$LOG" | tail -n1 || true)"
COMMON_VERSION=$VERSION
if ! download "$COMMON" "$COMMON_VERSION"; then
    COMMON_VERSION=$(pick_version "$COMMON")
    [ -n "$COMMON_VERSION" ] && download "$COMMON" "$COMMON_VERSION" ||
        die "apt-get download $COMMON (7.2) failed: $(grep -E '^(E|Err):' "$LOG" | tail -n1 || true)"
fi

# Unpack into a fresh tree next to DIR's content, then swap it in.
STAGE="$WORK/root"
mkdir -p "$STAGE"
dpkg-deb -x "$WORK"/${PKG}_*.deb "$STAGE" || die "dpkg-deb -x of $PKG failed"
dpkg-deb --fsys-tarfile "$WORK"/${COMMON}_*.deb |
    tar -x -C "$STAGE" --wildcards "./$MODDIR/accel-tcg-*" ||
    die "could not extract the TCG modules from $COMMON"
rm -rf "$DIR/usr"
cp -a "$STAGE/usr" "$DIR/"
[ -x "$BIN" ] || die "the package did not contain usr/bin/qemu-system-x86_64"

missing_libs() {
    { ldd "$BIN"; for m in "$DIR/$MODDIR"/*.so; do ldd "$m"; done; } 2>/dev/null |
        awk '/not found/ {print $1}' | sort -u
}
MISSING=$(missing_libs)
if [ -n "$MISSING" ]; then
    say "missing shared libraries: $(echo $MISSING)"
    # The packages that would bring them: the lib* names among qemu-system-x86's Depends
    # (the TCG modules need nothing beyond those; the rest of qemu-system-common's
    # Depends is for the display modules that are not unpacked).
    DEPS=$(dpkg-deb -f "$WORK"/${PKG}_*.deb Depends |
        tr ',' '\n' | sed -e 's/([^)]*)//g' -e 's/|.*//' -e 's/ //g' | grep '^lib' | sort -u)
    TODO=()
    for d in $DEPS; do
        dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || TODO+=("$d")
    done
    if [ ${#TODO[@]} -eq 0 ]; then
        die "libraries missing ($(echo $MISSING)) but every lib* dependency is installed; cannot fix"
    fi
    if [ "$(id -u)" -ne 0 ]; then
        die "libraries missing ($(echo $MISSING)); as root: apt-get install ${TODO[*]}"
    fi
    say "installing ${TODO[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${TODO[@]}" \
        >>"$LOG" 2>&1 || die "apt-get install ${TODO[*]} failed: $(tail -n1 "$LOG")"
    MISSING=$(missing_libs)
    [ -z "$MISSING" ] || die "still missing shared libraries after install: $(echo $MISSING)"
fi

version_ok || die "$BIN does not run --version as QEMU 7.2: $("$BIN" --version 2>&1 | head -n2 | tr '\n' ' ')"
qmp_ok || die "$BIN --version works but it does not start with -machine none -qmp stdio"
printf '%s\n' "$VERSION" > "$STAMP"
say "ready: $("$BIN" --version | head -n1)"
printf '%s\n' "$BIN"
