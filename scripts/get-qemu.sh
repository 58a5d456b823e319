#!/usr/bin/env bash
# Put a runnable QEMU of a given version in a cache outside the repository and print
# the absolute path of its qemu-system-x86_64 (or qemu-system-aarch64).
#
#   scripts/get-qemu.sh VERSION [--arch x86_64|aarch64] [--source]
#   scripts/get-qemu.sh LABEL --from TREE|TARBALL     (a QEMU source tree of your own)
#
# stdout: one line, the path (give it to --qemu-src/--qemu-dst). Progress goes to stderr
# as "get-qemu: ..." lines. On failure: exit 1 (2 for bad usage) and ONE stderr line
# "get-qemu: <why>; <what to do>". docs/qemu-builds.md has the measured times and sizes.
#
# Where a version comes from:
#  - 10.0.2: the installed QEMU (/usr/bin, bookworm-backports; scripts/setup-host.sh
#    installs it). Nothing is copied.
#  - a version Debian's archive (sid, trixie, trixie-security) has as a BINARY package
#    (qemu-system-x86, or qemu-system-arm for --arch aarch64), e.g. sid's 11.1.3: the
#    "binary route". The whole dependency closure (glibc included) is downloaded with a
#    private apt (its own sources.list, lists, cache and an EMPTY dpkg status: the
#    system's apt sources and state are never touched), unpacked with dpkg -x into a
#    private root R, the QEMU binary is copied and patchelf'ed to use R's dynamic loader
#    and libraries, and a wrapper bin/qemu-system-ARCH sets QEMU_MODULE_DIR and adds
#    -L for R's firmware, then execs it (same PID). ~10-20 s, ~40 MB of debs.
#  - a version the archive has only as a SOURCE package (e.g. 10.2.2): the "source
#    route", x86_64 only. `apt-get source` (private lists), dpkg-source -x, build deps
#    from bookworm (installed with the system's apt-get as root; otherwise named), a
#    meson wheel from PyPI, configure, make -j2 under nice -n 19, make install into the
#    cache. 6-13 min on 2 cores. The build tree (1.5 GB) is deleted afterwards unless
#    CPRH_KEEP_BUILD=1.
#  - --source forces the source route; without it the binary route wins when both exist.
#  - LABEL --from TREE|TARBALL: the "tree route" (scripts/get-qemu-tree.sh), x86_64 only.
#    Any QEMU source tree (a checkout with a series applied, a branch, a tarball) is
#    copied into the cache, the meson subprojects it lacks are taken from Debian's qemu
#    source, and it is built like the source route and cached under the label; a later
#    `get-qemu.sh LABEL` prints the cached build. A changed source is built again.
#
# Environment:
#   CPRH_QEMU_CACHE   cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/cpr-harness/qemu)
#   CPRH_KEEP_BUILD=1 keep the source route's build tree and the binary route's debs
#   CPRH_DEBIAN_MIRROR  default http://deb.debian.org/debian (security: .../debian-security)
#   CPRH_QEMU_REFRESH=1 re-read the archive's indexes even when they are less than 24 h old
#   CPRH_BUILD_NICE   niceness of configure/make (default 19)
#   CPRH_SUBPROJECTS_FROM  the Debian qemu source the tree route takes subprojects from (10.2.2)
#
# Idempotent: a stamp file per version records what was built; a later call checks that
# the recorded binary still says the right version on --version and prints its path,
# offline, in well under a second. Two calls for the same version at once are serialised
# with flock on a lock file in the cache (the second waits, then prints the path).
set -euo pipefail
umask 022
export LC_ALL=C

SELF=$(basename "$0")
USAGE="usage: scripts/$SELF VERSION [--arch x86_64|aarch64] [--source] | scripts/$SELF LABEL [--from TREE|TARBALL]"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=${CPRH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}
SEC_MIRROR=${MIRROR%/debian}/debian-security
MIRROR_HOST=$(printf '%s' "$MIRROR" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')
T0=$(date +%s)

say() { printf 'get-qemu: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
usage_die() { say "$*; $USAGE"; exit 2; }
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }

help() {
    cat >&2 <<EOF
get-qemu: $USAGE
Puts QEMU VERSION (X.Y.Z) in a cache outside the repository and prints the path of its
qemu-system-x86_64 (qemu-system-aarch64 with --arch aarch64) on stdout.
  10.0.2          the installed QEMU (scripts/setup-host.sh installs it)
  binary route    a version Debian's archive has as binaries (e.g. 11.1.3): ~25 s
  source route    a version it has only as source (e.g. 10.2.2), x86_64: 6-13 min build
  --source        build from Debian's source even when binaries exist
  LABEL --from T  build the QEMU source tree (or tarball) T, cached as LABEL (x86_64;
                  minutes); later just LABEL prints the cached build
Cache: \$CPRH_QEMU_CACHE, else \${XDG_CACHE_HOME:-\$HOME/.cache}/cpr-harness/qemu.
CPRH_KEEP_BUILD=1 keeps the build tree; CPRH_BUILD_NICE (default 19) the builds' niceness.
See docs/qemu-builds.md.
EOF
}

# --- arguments ------------------------------------------------------------------------
VERSION="" ARCH=x86_64 FORCE_SOURCE=0 FROM="" LABEL=""
[ $# -gt 0 ] || { say "$USAGE (--help for more)"; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help|help) help; exit 2 ;;
        --arch) [ $# -ge 2 ] || usage_die "--arch needs a value"; ARCH=$2; shift 2 ;;
        --arch=*) ARCH=${1#--arch=}; shift ;;
        --source) FORCE_SOURCE=1; shift ;;
        --from) [ $# -ge 2 ] || usage_die "--from needs a path (a QEMU source tree or tarball)"
                FROM=$2; shift 2 ;;
        --from=*) FROM=${1#--from=}; shift ;;
        -*) usage_die "unknown option '$1'" ;;
        *) [ -z "$VERSION" ] || usage_die "one VERSION only (got '$VERSION' and '$1')"
           VERSION=$1; shift ;;
    esac
done
[ -n "$VERSION" ] || usage_die "no VERSION given"
# A label names a build from a source tree (--from); it starts with a letter, so it is
# never taken for a version.
LABEL_RE='^[A-Za-z][A-Za-z0-9._+-]{0,63}$'
if [ -n "$FROM" ]; then
    [[ "$VERSION" =~ $LABEL_RE ]] ||
        usage_die "'$VERSION' is not a label for a build from --from (a letter, then letters, digits, . _ + -; e.g. rfc-v3)"
    [ "$FORCE_SOURCE" = 0 ] || usage_die "--source builds Debian's source of a version; --from builds your tree: give one of them"
    LABEL=$VERSION
elif [[ "$VERSION" =~ $LABEL_RE ]]; then
    LABEL=$VERSION   # a build from a tree, answered from the cache only (checked below)
else
    [[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
        usage_die "'$VERSION' is not a QEMU version (want X.Y.Z, e.g. 11.1.3) nor a label (e.g. rfc-v3 --from TREE)"
fi
case "$ARCH" in
    x86_64)  PKG=qemu-system-x86 BIN=qemu-system-x86_64 ;;
    aarch64) PKG=qemu-system-arm BIN=qemu-system-aarch64 ;;
    *) usage_die "--arch must be x86_64 or aarch64, not '$ARCH'" ;;
esac
if [ -n "$LABEL" ] && [ "$ARCH" != x86_64 ]; then
    usage_die "building --arch $ARCH from a source tree is not supported yet (x86_64 only)"
fi
if [ -n "$FROM" ]; then
    [ -e "$FROM" ] || usage_die "--from $FROM: no such file or directory (want a QEMU source tree or a tarball of one)"
    FROM=$(realpath -- "$FROM")
    if [ -d "$FROM" ]; then
        [ -f "$FROM/configure" ] && [ -f "$FROM/VERSION" ] ||
            usage_die "--from $FROM: not a QEMU source tree (no configure and VERSION at its top)"
    else
        case "$FROM" in
            *.tar|*.tar.xz|*.txz|*.tar.gz|*.tgz|*.tar.bz2|*.tbz2|*.tar.zst) ;;
            *) usage_die "--from $FROM: neither a directory nor a tarball (.tar, .tar.xz, .tar.gz, .tar.bz2, .tar.zst)" ;;
        esac
        [ -r "$FROM" ] || usage_die "--from $FROM: cannot read it"
    fi
fi

# The QEMU version a binary reports ("QEMU emulator version 11.1.3 (Debian ...)").
qemu_version() {
    { timeout 10 "$1" --version 2>/dev/null || true; } |
        sed -n '1s/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p'
}

# --- 10.0.2: the installed one --------------------------------------------------------
if [ "$VERSION" = 10.0.2 ] && [ "$FORCE_SOURCE" = 0 ]; then
    SYS=/usr/bin/$BIN
    [ -x "$SYS" ] ||
        die "QEMU 10.0.2 is not installed ($SYS missing): run scripts/setup-host.sh as root (it installs 10.0.2 from bookworm-backports)"
    V=$(qemu_version "$SYS")
    [ "$V" = 10.0.2 ] ||
        die "$SYS is QEMU ${V:-of unknown version}, not 10.0.2: run scripts/setup-host.sh as root for bookworm-backports' 10.0.2"
    printf '%s\n' "$SYS"
    exit 0
fi

# --- the cache ------------------------------------------------------------------------
CACHE=${CPRH_QEMU_CACHE:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/cpr-harness/qemu}
CACHE=$(realpath -m -- "$CACHE")   # absolute, symlinks resolved, nothing created yet
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
case "$CACHE/" in
    "$REPO"/*) die "the cache dir $CACHE is inside the repository $REPO: set CPRH_QEMU_CACHE to a directory outside it" ;;
esac
mkdir -p "$CACHE" 2>/dev/null || die "cannot create the cache dir $CACHE: set CPRH_QEMU_CACHE to a writable directory"

BDIR=$CACHE/$VERSION/$ARCH             # binary route: root/ bin/ stamp
SDIR=$CACHE/$VERSION/$ARCH-source      # source route: prefix/ build/ stamp
TDIR=$CACHE/tree/$VERSION/$ARCH        # tree route (a label): prefix/ logs/ stamp
LOCK=$CACHE/locks/$VERSION-$ARCH.lock
[ -z "$LABEL" ] || LOCK=$CACHE/locks/tree-$LABEL-$ARCH.lock
APTDIR=$CACHE/apt
mkdir -p "$CACHE/locks"
# shellcheck source=scripts/get-qemu-tree.sh
. "$(dirname "$0")/get-qemu-tree.sh"

# A stamp's path= line, when the binary it names still reports its version: $VERSION,
# or for a tree's label the version= the stamp recorded.
stamp_path() {  # STAMPFILE
    [ -s "$1" ] || return 1
    local p want=$VERSION
    p=$(sed -n 's/^path=//p' "$1" | head -n1)
    [ -n "$p" ] && [ -x "$p" ] || return 1
    [ -z "$LABEL" ] || want=$(sed -n 's/^version=//p' "$1" | head -n1)
    [ -n "$want" ] && [ "$(qemu_version "$p")" = "$want" ] || return 1
    printf '%s\n' "$p"
}

# The stamps that may answer: with --source only the source route's.
STAMPS=("$SDIR/stamp")
[ "$FORCE_SOURCE" = 1 ] || STAMPS=("$BDIR/stamp" "$SDIR/stamp")
[ -z "$LABEL" ] || STAMPS=("$TDIR/stamp")
cached() {
    local s
    [ -z "$FROM" ] || tree_stamp_matches "$TDIR/stamp" || return 1
    for s in "${STAMPS[@]}"; do stamp_path "$s" && return 0; done
    return 1
}

if cached; then exit 0; fi
if [ -n "$LABEL" ] && [ -z "$FROM" ]; then
    if [ -s "$TDIR/stamp" ]; then
        die "the cached build labelled $LABEL ($TDIR) no longer runs: build it again with --from PATH"
    fi
    usage_die "'$VERSION' is not a QEMU version (want X.Y.Z, e.g. 11.1.3) nor a label built before (none in $CACHE/tree; build one with: $VERSION --from TREE)"
fi

exec 9>>"$LOCK"
if ! flock -n 9; then
    say "another get-qemu is fetching QEMU $VERSION ($ARCH); waiting for it"
    flock -w 7200 9 || die "waited 2 h for the lock $LOCK: is another get-qemu stuck? (see its logs under $CACHE/$VERSION)"
fi
if cached; then exit 0; fi
for s in "${STAMPS[@]}"; do
    if [ -s "$s" ] && [ -n "$FROM" ] && ! tree_stamp_matches "$s"; then
        say "the source of the build labelled $LABEL changed since it was built ($(tree_stamp_field "$s" source)); building it again"
    elif [ -s "$s" ]; then say "the cached build in $(dirname "$s") no longer runs as QEMU $VERSION; fetching it again"; fi
done

# --- host prerequisites ---------------------------------------------------------------
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null && command -v apt-cache >/dev/null ||
    die "needs apt-get, apt-cache and dpkg-deb (a Debian host); this host lacks them"
[ "$(dpkg --print-architecture)" = amd64 ] ||
    die "this script knows amd64 hosts only; this one is $(dpkg --print-architecture)"
[ -r "$KEYRING" ] ||
    die "no $KEYRING to check the archive's signatures with: apt-get install debian-archive-keyring"
IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1

# Install packages from the host's own apt sources (bookworm). Root only.
host_install() {  # WHY PKG...
    local why=$1; shift
    local todo=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || todo+=("$p")
    done
    [ ${#todo[@]} -gt 0 ] || return 0
    [ "$IS_ROOT" = 1 ] || die "$why needs packages that are missing; as root run: apt-get install ${todo[*]}"
    say "installing ${todo[*]} ($why) with the host's apt-get"
    local log=$CACHE/host-apt.log
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${todo[@]}" >"$log" 2>&1; then
        # Lists never fetched on this host yet: fetch them once and try again.
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${todo[@]}" >>"$log" 2>&1 ||
            die "apt-get install ${todo[*]} failed: $(grep -E '^E:' "$log" | tail -n1) (log: $log)"
    fi
}

# --- the private apt ------------------------------------------------------------------
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache" "$APTDIR/state" "$APTDIR/log" "$APTDIR/preferences.d"
: >>"$APTDIR/status"
[ -s "$APTDIR/status" ] && : >"$APTDIR/status"   # an EMPTY dpkg status: resolve everything
write_sources() {
    local t
    {
        for t in deb deb-src; do
            echo "$t [arch=amd64 signed-by=$KEYRING] $MIRROR sid main"
            echo "$t [arch=amd64 signed-by=$KEYRING] $MIRROR trixie main"
            echo "$t [arch=amd64 signed-by=$KEYRING] $SEC_MIRROR trixie-security main"
        done
    } >"$APTDIR/sources.list.new"
    if ! cmp -s "$APTDIR/sources.list.new" "$APTDIR/sources.list" 2>/dev/null; then
        mv "$APTDIR/sources.list.new" "$APTDIR/sources.list"
        rm -f "$APTDIR/lists/"*_InRelease "$APTDIR/lists.read"   # another mirror: read afresh
    else
        rm -f "$APTDIR/sources.list.new"
    fi
    : >"$APTDIR/preferences"
}
APT=(-o "Dir::Etc::sourcelist=$APTDIR/sources.list" -o "Dir::Etc::sourceparts=-"
     -o "Dir::Etc::Preferences=$APTDIR/preferences" -o "Dir::Etc::PreferencesParts=$APTDIR/preferences.d"
     -o "Dir::State=$APTDIR/state" -o "Dir::State::Lists=$APTDIR/lists"
     -o "Dir::State::status=$APTDIR/status" -o "Dir::Cache=$APTDIR/cache" -o "Dir::Log=$APTDIR/log"
     -o "Dir::Cache::pkgcache=pkgcache.bin" -o "Dir::Cache::srcpkgcache=srcpkgcache.bin"
     -o "Acquire::Languages=none" -o "Acquire::Retries=1" -o "Acquire::http::Timeout=30"
     -o "APT::Install-Recommends=0" -o "APT::Install-Suggests=0")
APT_LOCK=$APTDIR/lock

# Hold the private apt's lock (its lists and caches are shared by all versions).
apt_locked() {  # CMD...
    ( exec 8>>"$APT_LOCK"; flock -w 1800 8 || exit 99; "$@" )
}
apt_locked write_sources

# One line saying why an apt log failed, or nothing.
apt_failure() {  # LOG
    local l
    l=$(grep -m1 -E "Temporary failure resolving|Could not resolve|Could not connect|Connection failed|Connection timed out|Unable to connect|No route to host|Network is unreachable|Connection refused" "$1" || true)
    if [ -n "$l" ]; then
        echo "cannot reach $MIRROR_HOST: $(printf '%s' "$l" | sed -E 's/^ *(Err:[0-9]+ |W: |E: )?//; s/  +/ /g' | cut -c1-200); check the network (or CPRH_DEBIAN_MIRROR) and try again"
        return
    fi
    l=$(grep -m1 -E "^W: GPG error" "$1" ||
        grep -m1 -E "NO_PUBKEY|EXPKEYSIG|BADSIG|is not signed|signatures couldn't be verified|not valid yet|is no longer valid" "$1" || true)
    if [ -n "$l" ]; then
        l=$(printf '%s' "$l" | sed -E 's/^ *(W: |E: )?//; s/^GPG error: [^ ]+ ([^ ]+) InRelease: [^:]*: (.*)$/\1: \2/' | cut -c1-200)
        echo "the archive's signature does not verify with $KEYRING ($l): install a newer debian-archive-keyring (verification stays on)"
        return
    fi
    l=$(grep -m1 -E "^E: Failed to fetch" "$1" || grep -m1 -E "^E: " "$1" ||
        grep -m1 -A1 -E "^Err:" "$1" | tr '\n' ' ' || true)
    [ -z "$l" ] || echo "$(printf '%s' "$l" | sed -E 's/^E: //; s/ *\[IP: [^]]*\]//; s/  +/ /g' | cut -c1-220)"
}

# Die for a failed apt run: network and signature problems as they are, others in context.
apt_die() {  # WHAT LOG
    local why; why=$(apt_failure "$2")
    case "$why" in
        "cannot reach "*|"the archive's signature "*) die "$why" ;;
        "") die "$1 failed (log: $2)" ;;
        *) die "$1 failed: $why (log: $2)" ;;
    esac
}

# True when the private indexes were read over an hour ago (a miss may then be news).
lists_stale() { ! lists_fresh 60; }

UPDATED=0
# True when all 3 suites' indexes are there and were read less than MINUTES ago. (Their
# own mtimes are the server's Last-Modified, so a stamp of ours records the reading.)
lists_fresh() {  # MINUTES
    [ "$(find "$APTDIR/lists" -maxdepth 1 -name '*_InRelease' | wc -l)" -ge 3 ] &&
        [ -n "$(find "$APTDIR/lists.read" -mmin "-$1" 2>/dev/null)" ]
}
update_locked() {  # LOG; under the apt lock: a concurrent call may just have read them
    if lists_fresh 2; then : >"$1"; return 0; fi
    say "reading the archive's indexes (sid, trixie, trixie-security) from $MIRROR_HOST"
    apt-get "${APT[@]}" -q update >"$1" 2>&1 || true
    [ -n "$(apt_failure "$1")" ] || touch "$APTDIR/lists.read"
}
do_update() {
    local log=$APTDIR/log/update.log
    apt_locked update_locked "$log" || true
    local why
    why=$(apt_failure "$log")
    [ -z "$why" ] || apt_die "reading the archive's indexes" "$log"
    UPDATED=1
}

ensure_lists() {
    if ! lists_fresh 1440 || [ "${CPRH_QEMU_REFRESH:-0}" = 1 ]; then
        do_update
    fi
}

upstream_of() { sed -E 's/^[0-9]+://; s/[+~-].*$//'; }

# "DEBVERSION SUITE" lines for binary package $1 / for source package qemu.
binary_versions() {
    apt_locked apt-cache "${APT[@]}" madison "$1" 2>/dev/null |
        awk -F'|' -v p="$1" '{gsub(/ /,"",$1); gsub(/ /,"",$2)} $1==p && $3 ~ /Packages *$/ {
            n=split($3, a, " "); split(a[2], s, "/"); print $2, s[1]}'
}
source_versions() {
    apt_locked apt-cache "${APT[@]}" madison qemu 2>/dev/null |
        awk -F'|' '{gsub(/ /,"",$1); gsub(/ /,"",$2)} $1=="qemu" && $3 ~ /Sources *$/ {
            n=split($3, a, " "); split(a[2], s, "/"); print $2, s[1]}'
}
# The highest "DEBVERSION SUITE" whose upstream version is $VERSION, from stdin.
pick() {
    local best="" bsuite="" v s
    while read -r v s; do
        [ "$(printf '%s' "$v" | upstream_of)" = "$VERSION" ] || continue
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v bsuite=$s; fi
    done
    [ -z "$best" ] || echo "$best $bsuite"
}
upstreams() {  # distinct upstream versions from "DEBVERSION SUITE" lines, newest first
    awk '{print $1}' | upstream_of | sort -u -V -r | paste -sd, - | sed 's/,/, /g'
}

if [ -z "$LABEL" ]; then
    ensure_lists
    resolve() {
        BIN_PICK=$(binary_versions "$PKG" | pick)
        SRC_PICK=$(source_versions | pick)
    }
    resolve
    # Not there: maybe uploaded since the indexes were read; re-read them if over an hour old.
    if [ -z "$BIN_PICK$SRC_PICK" ] && [ "$UPDATED" = 0 ] && lists_stale; then
        do_update; resolve
    fi
    if [ -z "$BIN_PICK$SRC_PICK" ]; then
        die "no QEMU $VERSION in Debian's archive (binaries: $(binary_versions "$PKG" | upstreams); sources: $(source_versions | upstreams)): ask for one of those"
    fi
    ROUTE=binary
    if [ "$FORCE_SOURCE" = 1 ] || [ -z "$BIN_PICK" ]; then ROUTE=source; fi
    if [ "$ROUTE" = source ] && [ -z "$SRC_PICK" ]; then
        die "--source: the archive has no source package for QEMU $VERSION (sources: $(source_versions | upstreams)); drop --source to use its binaries"
    fi
else
    ROUTE=tree
fi

# --- proving a QEMU runs --------------------------------------------------------------
# QMP exchange: capabilities, query-version, quit. Prints "MAJOR.MINOR.MICRO".
qmp_version() {  # QEMU [extra args...]
    local q=$1; shift
    local out
    out=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-version"}' '{"execute":"quit"}' |
          timeout 30 "$q" -nodefaults -display none "$@" -qmp stdio 2>&1) || {
        say "QMP run failed: $(printf '%s' "$out" | tail -n2 | tr '\n' ' ')"; return 1; }
    local ma mi mc
    ma=$(grep -o '"major": *[0-9]*' <<<"$out" | head -n1 | grep -o '[0-9]*$' || true)
    mi=$(grep -o '"minor": *[0-9]*' <<<"$out" | head -n1 | grep -o '[0-9]*$' || true)
    mc=$(grep -o '"micro": *[0-9]*' <<<"$out" | head -n1 | grep -o '[0-9]*$' || true)
    [ -n "$ma" ] || { say "no query-version answer: $(printf '%s' "$out" | tail -n2 | tr '\n' ' ')"; return 1; }
    printf '%s.%s.%s\n' "$ma" "$mi" "$mc"
}

# Checks a QEMU: --version, -accel help, -machine help, a QMP round trip on -machine
# none, and (x86) a q35 machine created with its BIOS. Dies with the first problem.
prove() {  # QEMU
    local q=$1 v out want=${QVERSION:-$VERSION}
    v=$(qemu_version "$q")
    [ "$v" = "$want" ] || die "$q --version says '${v:-nothing}', not $want: $( { "$q" --version 2>&1 || true; } | head -n1)"
    out=$(timeout 20 "$q" -accel help 2>&1) || die "$q -accel help failed: $(printf '%s' "$out" | tail -n1)"
    grep -qx tcg <<<"$out" || die "$q -accel help does not list tcg: $(printf '%s' "$out" | tr '\n' ' ')"
    out=$(timeout 20 "$q" -machine help 2>&1) || die "$q -machine help failed: $(printf '%s' "$out" | tail -n1)"
    local m=virt; [ "$ARCH" = x86_64 ] && m=q35
    grep -q "^$m " <<<"$out" || die "$q -machine help does not list $m"
    v=$(qmp_version "$q" -machine none) || die "$q does not answer QMP with -machine none (see above)"
    [ "$v" = "$want" ] || die "$q answers query-version with $v, not $want"
    # A real machine: x86 loads its BIOS here, so a QEMU that cannot find its
    # firmware fails now rather than in the harness.
    v=$(qmp_version "$q" -machine "$m" -accel tcg -S) ||
        die "$q cannot create a $m machine (firmware or modules missing? see above)"
    say "checked $q: --version, -accel help, -machine help, QMP query-version = $v on -machine none and $m"
}

sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

write_stamp() {  # FILE PATH DEBVERSION ROUTE EXTRA...
    local f=$1 p=$2 dv=$3 r=$4; shift 4
    { echo "version=${QVERSION:-$VERSION}"; echo "arch=$ARCH"; echo "route=$r"; echo "debian_version=$dv"
      echo "path=$p"; echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "seconds=$(( $(date +%s) - T0 ))"
      for kv in "$@"; do echo "$kv"; done; } >"$f.new"
    mv "$f.new" "$f"
}

# --- the binary route -----------------------------------------------------------------
binary_route() {
    local debv suite
    read -r debv suite <<<"$BIN_PICK"
    if ! command -v patchelf >/dev/null; then
        host_install "patching the unpacked QEMU" patchelf
    fi
    rm -f "$BDIR/stamp"
    mkdir -p "$BDIR"
    local debs=$BDIR/debs log=$BDIR/download.log
    mkdir -p "$debs/partial"
    # Dependencies from the same suite family as QEMU itself (trixie's QEMU with trixie's
    # libraries); sid is the highest everywhere, so it needs no pin.
    local prefs=$BDIR/preferences
    : >"$prefs"
    case "$suite" in trixie*)
        printf 'Package: *\nPin: release n=trixie\nPin-Priority: 990\n\nPackage: *\nPin: release n=trixie-security\nPin-Priority: 990\n' >"$prefs" ;;
    esac
    say "downloading $PKG=$debv ($suite) and its whole dependency closure"
    local t1; t1=$(date +%s)
    dl() {
        apt_locked apt-get "${APT[@]}" -o "Dir::Etc::Preferences=$prefs" -o "Dir::Cache::archives=$debs" \
            -y -q --download-only install "$PKG=$debv" >"$log" 2>&1
    }
    if ! dl; then
        if [ "$UPDATED" = 0 ] && grep -q '404' "$log" && lists_stale; then do_update; dl || true; fi
    fi
    [ -z "$(apt_failure "$log")" ] || apt_die "downloading $PKG=$debv" "$log"
    ls "$debs"/*.deb >/dev/null 2>&1 || die "downloading $PKG=$debv fetched nothing (log: $log)"
    local ndeb dlbytes
    ndeb=$(ls "$debs"/*.deb | wc -l)
    dlbytes=$(du -sb "$debs" | cut -f1)
    say "downloaded $ndeb debs, $((dlbytes / 1048576)) MB, in $(( $(date +%s) - t1 )) s; unpacking"

    local R=$BDIR/root
    rm -rf "$R" "$BDIR/bin"
    mkdir -p "$R"
    local d name skipped=""
    for d in "$debs"/*.deb; do
        name=$(dpkg-deb -f "$d" Package)
        case "$name" in
            # An init system and its private library: nothing QEMU loads.
            systemd|libsystemd-shared) skipped="$skipped $name"; continue ;;
        esac
        dpkg-deb -x "$d" "$R" || die "dpkg-deb -x $d failed"
    done
    local L=$R/usr/lib/x86_64-linux-gnu
    [ -x "$R/usr/bin/$BIN" ] || die "$PKG=$debv did not contain usr/bin/$BIN"
    [ -e "$L/ld-linux-x86-64.so.2" ] || die "the closure of $PKG=$debv brought no usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 (libc6 layout changed?)"
    # Patch a copy and give it the binary's own name (QEMU prefixes its messages with
    # argv[0]'s basename, and finds relocated paths from its own directory); Debian's
    # pristine binary stays beside it as $BIN.debian.
    local real=$R/usr/bin/$BIN
    mv "$real" "$real.debian"
    cp -p "$real.debian" "$real.new"
    patchelf --set-interpreter "$L/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$L" "$real.new" ||
        die "patchelf on $real.new failed"
    mv "$real.new" "$real"
    # Modules whose libraries are not in the closure would make QEMU warn whenever it
    # loads every module (qom-list-types): set them aside.
    local mod n missing aside=""
    for mod in "$L"/qemu/*.so; do
        [ -e "$mod" ] || continue
        missing=""
        for n in $(readelf -d "$mod" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$L/$n" ] || missing="$missing $n"
        done
        if [ -n "$missing" ]; then
            mkdir -p "$L/qemu.unusable"; mv "$mod" "$L/qemu.unusable/"
            aside="$aside $(basename "$mod")"
        fi
    done
    [ -z "$aside" ] || say "set aside modules whose libraries are not in the closure:$aside"

    mkdir -p "$BDIR/bin"
    local wrap=$BDIR/bin/$BIN ldirs="" dir
    for dir in "$R/usr/share/qemu" "$R/usr/share/seabios" "$R/usr/lib/ipxe/qemu"; do
        [ -d "$dir" ] && ldirs="$ldirs -L $(sq "$dir")"
    done
    {
        echo '#!/bin/sh'
        echo "# Written by scripts/get-qemu.sh: QEMU $VERSION from Debian's $PKG $debv ($suite),"
        echo "# unpacked with its whole dependency closure in $R."
        echo "# The binary uses that root's dynamic loader and libraries (patchelf); this"
        echo "# wrapper points QEMU at that root's modules and firmware and execs it (same PID)."
        echo "QEMU_MODULE_DIR=$(sq "$L/qemu")"
        echo "export QEMU_MODULE_DIR"
        echo "exec $(sq "$real")$ldirs \"\$@\""
    } >"$wrap.new"
    chmod 755 "$wrap.new"
    mv "$wrap.new" "$wrap"

    prove "$wrap"
    local unpacked; unpacked=$(du -sb "$R" | cut -f1)
    if [ "${CPRH_KEEP_BUILD:-0}" != 1 ]; then rm -rf "$debs"; fi
    write_stamp "$BDIR/stamp" "$wrap" "$debv" binary "suite=$suite" "debs=$ndeb" \
        "download_bytes=$dlbytes" "unpacked_bytes=$unpacked" "skipped=${skipped# }" "modules_aside=${aside# }"
    say "ready in $(elapsed): QEMU $VERSION ($debv, $ndeb debs, $((dlbytes / 1048576)) MB downloaded, $((unpacked / 1048576)) MB unpacked)"
    printf '%s\n' "$wrap"
}

# --- building a QEMU source tree (the source route and the tree route) ----------------
BUILD_DEPS=(gcc make pkg-config ninja-build flex bison python3-venv python3-distlib python3-pip
            libglib2.0-dev libpixman-1-dev libslirp-dev libfdt-dev zlib1g-dev dpkg-dev xz-utils)
NICE=${CPRH_BUILD_NICE:-19}
[[ "$NICE" =~ ^[0-9]+$ ]] && [ "$NICE" -le 19 ] || die "CPRH_BUILD_NICE must be 0..19, not '$NICE'"

# Debian's own python3 (with the python3-venv and python3-distlib the build deps bring),
# not whatever python3 comes first on PATH (pyenv shims, for one).
build_python() {
    local py=/usr/bin/python3
    [ -x "$py" ] || py=$(command -v python3) || die "no python3 to configure QEMU with: apt-get install python3"
    printf '%s\n' "$py"
}

# Download Debian's source package qemu=SRCV into DLDIR (private lists, deb-src lines).
fetch_debian_source() {  # SRCV DLDIR LOG
    local srcv=$1 dl=$2 log=$3
    mkdir -p "$dl"
    sdl() { (cd "$dl" && apt_locked apt-get "${APT[@]}" -q source --download-only "qemu=$srcv") >"$log" 2>&1; }
    if ! sdl; then
        if [ "$UPDATED" = 0 ] && grep -q '404' "$log" && lists_stale; then do_update; sdl || true; fi
    fi
    local why; why=$(apt_failure "$log")
    case "$why" in
        "") ;;
        *404*) die "the archive lists the source qemu=$srcv but answers 404 Not Found for qemu_${srcv#*:}.dsc: ask for another version, or drop --source where it has binaries (binaries: $(binary_versions "$PKG" | upstreams))" ;;
        *) apt_die "downloading the source qemu=$srcv" "$log" ;;
    esac
    ls "$dl"/qemu_*.dsc >/dev/null 2>&1 || die "apt-get source qemu=$srcv fetched no .dsc (log: $log)"
}

# The meson wheel the tree's pythondeps.toml installs, in its python/wheels (configure
# --disable-download takes it from there). Debian's +ds tarball bundles none and
# bookworm's meson (1.0.1) is too old; an upstream tree usually carries its own.
# Sets MESONV.
meson_wheel() {  # SRC LOGDIR PY
    local src=$1 log=$2 py=$3
    MESONV=$(sed -n 's/^meson *= *{.*installed *= *"\([^"]*\)".*/\1/p' "$src/pythondeps.toml" 2>/dev/null | head -n1)
    [ -n "$MESONV" ] || MESONV=$(sed -n 's/^meson *= *{.*installed *= *"\([^"]*\)".*/\1/p' "$src/python/pythondeps.toml" 2>/dev/null | head -n1)
    [ -n "$MESONV" ] || die "cannot tell which meson QEMU $VERSION wants (no meson line in pythondeps.toml)"
    if ls "$src/python/wheels"/meson-"$MESONV"-*.whl >/dev/null 2>&1; then return 0; fi
    mkdir -p "$CACHE/wheels" "$src/python/wheels"
    if ! ls "$CACHE/wheels"/meson-"$MESONV"-*.whl >/dev/null 2>&1; then
        say "downloading the meson $MESONV wheel from PyPI"
        "$py" -m pip download -q --no-deps --only-binary :all: "meson==$MESONV" -d "$CACHE/wheels" >"$log/pip.log" 2>&1 ||
            die "pip download meson==$MESONV failed: $(grep -iE 'error|could not' "$log/pip.log" | tail -n1) (log: $log/pip.log)"
    fi
    cp "$CACHE/wheels"/meson-"$MESONV"-*.whl "$src/python/wheels/"
}

# configure (x86_64-softmmu, KVM and TCG, no UI), make -j2 and make install into P, all
# under nice; then prove the installed binary. Sets TBUILD (make seconds) and BUILDBYTES.
build_install() {  # SRC P LOGDIR PY PKGVERSION [EXTRA CONFIGURE ARGS...]
    local src=$1 P=$2 log=$3 py=$4 pkgv=$5; shift 5
    mkdir -p "$src/build" "$log"
    say "configuring (log: $log/configure.log)"
    (cd "$src/build" && nice -n "$NICE" ../configure --python="$py" \
        --with-pkgversion="$pkgv" \
        --target-list=x86_64-softmmu --disable-docs \
        --disable-werror --disable-download --enable-kvm --enable-tcg \
        --enable-slirp --enable-fdt=system --disable-user --disable-gtk --disable-sdl \
        --disable-vnc --disable-opengl --disable-spice --prefix="$P" "$@") \
        >"$log/configure.log" 2>&1 ||
        die "configure failed: $(grep -E 'ERROR|error' "$log/configure.log" | tail -n1) (log: $log/configure.log)"
    local t2; t2=$(date +%s)
    say "building with make -j2 under nice -n $NICE (6 min on 2 idle cores, 13 min on busy ones; log: $log/make.log)"
    (cd "$src/build" && nice -n "$NICE" make -j2) >"$log/make.log" 2>&1 ||
        die "make failed: $(grep -E 'error|Error' "$log/make.log" | head -n1 | cut -c1-200) (log: $log/make.log)"
    TBUILD=$(( $(date +%s) - t2 ))
    BUILDBYTES=$(du -sb "$src" | cut -f1)
    rm -rf "$P"
    (cd "$src/build" && nice -n "$NICE" make install) >"$log/install.log" 2>&1 ||
        die "make install failed: $(grep -iE 'error' "$log/install.log" | tail -n1) (log: $log/install.log)"
    [ -x "$P/bin/$BIN" ] || die "make install did not produce $P/bin/$BIN"
    prove "$P/bin/$BIN"
}

# --- the source route -----------------------------------------------------------------
source_route() {
    [ "$ARCH" = x86_64 ] ||
        die "building --arch $ARCH from source is not supported yet (x86_64 only), and the archive has no $PKG $VERSION binaries; use --arch x86_64 or a version with binaries ($(binary_versions "$PKG" | upstreams))"
    local srcv suite
    read -r srcv suite <<<"$SRC_PICK"
    host_install "building QEMU from source" "${BUILD_DEPS[@]}"
    local py; py=$(build_python)
    rm -f "$SDIR/stamp"
    mkdir -p "$SDIR"
    local B=$SDIR/build P=$SDIR/prefix log=$SDIR/logs
    mkdir -p "$log"
    rm -rf "$B"; mkdir -p "$B/dl"
    say "downloading Debian's source qemu=$srcv ($suite)"
    local t1; t1=$(date +%s)
    fetch_debian_source "$srcv" "$B/dl" "$log/source.log"
    local dsc; dsc=$(ls "$B"/dl/qemu_*.dsc | head -n1)
    local dlbytes; dlbytes=$(du -sb "$B/dl" | cut -f1)
    say "downloaded the source, $((dlbytes / 1048576)) MB, in $(( $(date +%s) - t1 )) s; unpacking"
    # apt has checked the files' hashes against the signed index; dpkg-source's own check
    # of the .dsc signature needs debian-keyring, which a host seldom has (a warning only).
    dpkg-source -x "$dsc" "$B/src" >"$log/dpkg-source.log" 2>&1 ||
        die "dpkg-source -x $dsc failed: $(tail -n1 "$log/dpkg-source.log") (log: $log/dpkg-source.log)"
    meson_wheel "$B/src" "$log" "$py"
    # The +ds tarball has no firmware blobs: the installed binary takes the host's.
    build_install "$B/src" "$P" "$log" "$py" "Debian $srcv source, built by get-qemu.sh" \
        --disable-install-blobs --disable-rust \
        --firmwarepath="$P/share/qemu:/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"
    local q=$P/bin/$BIN
    local instbytes; instbytes=$(du -sb "$P" | cut -f1)
    if [ "${CPRH_KEEP_BUILD:-0}" = 1 ]; then
        say "kept the build tree $B/src/build (CPRH_KEEP_BUILD=1)"
    else
        rm -rf "$B"
    fi
    write_stamp "$SDIR/stamp" "$q" "$srcv" source "suite=$suite" "meson=$MESONV" "make_seconds=$TBUILD" \
        "download_bytes=$dlbytes" "build_tree_bytes=$BUILDBYTES" "install_bytes=$instbytes"
    say "ready in $(elapsed): QEMU $VERSION built from $srcv (make $TBUILD s, build tree $((BUILDBYTES / 1048576)) MB, install $((instbytes / 1048576)) MB)"
    printf '%s\n' "$q"
}

case "$ROUTE" in
    binary) binary_route ;;
    source) source_route ;;
    tree) tree_route ;;
esac
