#!/usr/bin/env bash
# Host set-up for the cpr-transfer conformance harness, on Debian 12 (bookworm).
# Idempotent: adds bookworm-backports, installs QEMU >= 10.0 (x86 and arm) and the
# guest toolchains (binutils, aarch64 cross binutils).
# Run as root. As another user it only checks and says what is missing.
set -euo pipefail

QEMU_MIN="10.0"
APT_PKGS_BACKPORTS=(qemu-system-x86 qemu-system-arm qemu-utils)
# The linux-x86 guest needs no package here: images/build.py fetches its kernel and
# busybox with `apt-get download` and unpacks them with dpkg-deb (both always on Debian).
# gdb: the backtrace of a QEMU that crashes (harness/qemu/crash.py). rsync and git:
# gitlab-ci-local's runs of the fleet pipeline (tox -e gitlab, docs/fleet.md).
APT_PKGS=(binutils binutils-aarch64-linux-gnu python3-venv python3-pip procps gdb rsync git)
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources

say() { printf 'setup-host: %s\n' "$*" >&2; }

qemu_bin_ok() {
    command -v "$1" >/dev/null 2>&1 || return 1
    local v
    v=$("$1" --version | sed -n 's/^QEMU emulator version \([0-9]*\.[0-9]*\).*/\1/p')
    [ -n "$v" ] || return 1
    [ "$(printf '%s\n%s\n' "$QEMU_MIN" "$v" | sort -V | head -n1)" = "$QEMU_MIN" ]
}

qemu_ok() {
    qemu_bin_ok qemu-system-x86_64 && qemu_bin_ok qemu-system-aarch64
}

tools_ok() {
    command -v gdb >/dev/null && command -v rsync >/dev/null && command -v git >/dev/null &&
    command -v as >/dev/null && command -v ld >/dev/null && command -v objcopy >/dev/null &&
        command -v aarch64-linux-gnu-as >/dev/null && command -v aarch64-linux-gnu-ld >/dev/null &&
        command -v aarch64-linux-gnu-objcopy >/dev/null && command -v dpkg-deb >/dev/null
}

if qemu_ok && tools_ok; then
    say "QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') and binutils present; nothing to install"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "not root, so nothing was installed. As root, on Debian 12, run:"
    say "  $0"
    say "or by hand: add 'bookworm-backports' to apt's sources, then"
    say "  apt-get update && apt-get install -t bookworm-backports ${APT_PKGS_BACKPORTS[*]} && apt-get install ${APT_PKGS[*]}"
    exit 1
fi

. /etc/os-release
if [ "${VERSION_CODENAME:-}" != "bookworm" ]; then
    say "this script knows Debian 12 (bookworm); this is '${PRETTY_NAME:-unknown}'."
    say "install QEMU >= $QEMU_MIN (qemu-system-x86_64, qemu-system-aarch64), binutils, aarch64 cross binutils and python3-venv with your package manager."
    exit 1
fi

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to $BACKPORTS_FILE"
    cat > "$BACKPORTS_FILE" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
say "apt-get update"
apt-get update -qq
say "installing ${APT_PKGS_BACKPORTS[*]} from bookworm-backports"
apt-get install -y -qq -t bookworm-backports --no-install-recommends "${APT_PKGS_BACKPORTS[@]}" >/dev/null
say "installing ${APT_PKGS[*]}"
apt-get install -y -qq --no-install-recommends "${APT_PKGS[@]}" >/dev/null

if ! qemu_ok; then
    say "QEMU is still older than $QEMU_MIN after install: $(qemu-system-x86_64 --version | head -n1)"
    exit 1
fi
say "ready: $(qemu-system-x86_64 --version | head -n1)"
say "ready: $(qemu-system-aarch64 --version | head -n1)"
