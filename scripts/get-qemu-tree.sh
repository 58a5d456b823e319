# The tree route of scripts/get-qemu.sh (sourced by it, not run alone): build a QEMU from
# a local source tree or tarball under a label, e.g.
#
#   scripts/get-qemu.sh rfc-v3 --from ../shared/qemu-src/qemu-cpr-transfer-v3.tar.xz
#   scripts/get-qemu.sh my-series --from ~/src/qemu        # a checkout: a b4 am'd series, a branch
#   scripts/get-qemu.sh rfc-v3                             # later: the cached build, offline
#
# The source is copied (a tarball unpacked) into the cache and built there; the tree given
# is never written to. What an upstream checkout fetches at configure time and a copy
# lacks (the meson subprojects keycodemapdb, berkeley-softfloat-3, berkeley-testfloat-3:
# `git archive` leaves them out) comes from Debian's qemu source package
# (CPRH_SUBPROJECTS_FROM, default 10.2.2), unpacked once into $CACHE/subprojects/.
# The build is cached under $CACHE/tree/LABEL/x86_64 with a stamp that records the
# source's identity (a tarball's sha256; a checkout's HEAD and the hash of its changes; a
# plain directory's file list with sizes and times): the same label from a changed source
# is built again. docs/qemu-builds.md has the measured times.

# Subprojects an x86_64-softmmu build with get-qemu's options configures.
TREE_SUBPROJECTS=(keycodemapdb berkeley-softfloat-3 berkeley-testfloat-3)
SUBPROJECTS_FROM=${CPRH_SUBPROJECTS_FROM:-10.2.2}
_TREE_ID=""

# "KIND:ID" for the --from source: what a rebuild is decided on.
tree_source_id() {
    if [ -n "$_TREE_ID" ]; then printf '%s\n' "$_TREE_ID"; return; fi
    local id
    if [ -f "$FROM" ]; then
        id="tarball:$(sha256sum "$FROM" | cut -c1-64)"
    elif git -C "$FROM" rev-parse --git-dir >/dev/null 2>&1 &&
         [ "$(git -C "$FROM" rev-parse --show-toplevel 2>/dev/null)" = "$FROM" ]; then
        local head changes
        head=$(git -C "$FROM" rev-parse HEAD 2>/dev/null || echo none)
        # Uncommitted changes and untracked files count: a developer builds what is there.
        changes=$({ git -C "$FROM" diff HEAD --binary 2>/dev/null
                    git -C "$FROM" ls-files -o --exclude-standard 2>/dev/null |
                        (cd "$FROM" && xargs -r -d '\n' stat -c '%n %s %Y' 2>/dev/null); } |
                  sha256sum | cut -c1-16)
        id="git:$head:$changes"
    else
        id="dir:$(cd "$FROM" && find . \( -name .git -o -name 'build*' \) -prune -o -type f \
                  -printf '%P %s %T@\n' | LC_ALL=C sort | sha256sum | cut -c1-64)"
    fi
    _TREE_ID=$id
    printf '%s\n' "$id"
}

tree_stamp_field() {  # STAMP KEY
    sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n1
}

# True when STAMP was built from the --from source as it is now.
tree_stamp_matches() {  # STAMP
    [ -s "$1" ] || return 1
    [ "$(tree_stamp_field "$1" source)" = "$FROM" ] &&
        [ "$(tree_stamp_field "$1" source_id)" = "$(tree_source_id)" ]
}

# Debian's qemu source (its orig tarball), once: $CACHE/subprojects/UPSTREAM holds its
# subprojects/. Prints that directory.
debian_subprojects() {
    local keep=$VERSION d
    VERSION=$SUBPROJECTS_FROM   # pick() and upstream_of() compare against $VERSION
    ensure_lists
    local pickd; pickd=$(source_versions | pick)
    VERSION=$keep
    [ -n "$pickd" ] || die "the source tree lacks the subprojects ${TREE_SUBPROJECTS[*]} and Debian's archive has no qemu $SUBPROJECTS_FROM source to take them from (CPRH_SUBPROJECTS_FROM names another version; sources: $(source_versions | upstreams))"
    local srcv suite; read -r srcv suite <<<"$pickd"
    local up; up=$(printf '%s' "$srcv" | upstream_of)
    d=$CACHE/subprojects/$up
    if [ -f "$d/.complete" ]; then printf '%s\n' "$d"; return; fi
    local dl=$CACHE/subprojects/dl-$up log=$CACHE/subprojects/$up.source.log
    rm -rf "$dl" "$d"; mkdir -p "$dl"
    say "downloading Debian's source qemu=$srcv ($suite) for its meson subprojects"
    fetch_debian_source "$srcv" "$dl" "$log"
    local orig; orig=$(ls "$dl"/qemu_*.orig.tar.* 2>/dev/null | head -n1)
    [ -n "$orig" ] || die "Debian's source qemu=$srcv has no .orig tarball (log: $log)"
    mkdir -p "$dl/x"
    tar -xf "$orig" -C "$dl/x" --wildcards '*/subprojects/*' ||
        die "cannot unpack the subprojects of $orig"
    local sp; sp=$(find "$dl/x" -mindepth 2 -maxdepth 2 -type d -name subprojects | head -n1)
    [ -n "$sp" ] || die "$orig has no subprojects/ directory"
    mv "$sp" "$d"
    rm -rf "$dl"
    : >"$d/.complete"
    printf '%s\n' "$d"
}

# Unpack the tarball, or copy the tree (without .git and without build directories: any
# directory holding a build.ninja), into DEST.
tree_copy() {  # DEST
    local dest=$1
    rm -rf "$dest"; mkdir -p "$dest"
    if [ -f "$FROM" ]; then
        local x=$dest.unpack
        rm -rf "$x"; mkdir -p "$x"
        tar -xf "$FROM" -C "$x" 2>"$x.err" ||
            die "cannot unpack $FROM: $(tail -n1 "$x.err")"
        rm -f "$x.err"
        # A tarball of one top directory (git archive --prefix, release tarballs): its content.
        local top; top=$(find "$x" -mindepth 1 -maxdepth 1)
        if [ "$(printf '%s\n' "$top" | wc -l)" = 1 ] && [ -d "$top" ]; then
            rmdir "$dest"; mv "$top" "$dest"; rmdir "$x"
        else
            rmdir "$dest"; mv "$x" "$dest"
        fi
        [ -f "$dest/configure" ] && [ -f "$dest/VERSION" ] ||
            die "$FROM is not a tarball of a QEMU source tree (no configure and VERSION at its top)"
    else
        tar -C "$FROM" --exclude=./.git --exclude-tag-all=build.ninja -cf - . |
            tar -C "$dest" -xf - || die "cannot copy $FROM to $dest"
    fi
}

# How the source is named in the binary's --version (its pkgversion).
tree_describe() {
    if [ -f "$FROM" ]; then
        basename "$FROM"
    elif git -C "$FROM" rev-parse --git-dir >/dev/null 2>&1; then
        local d; d=$(git -C "$FROM" describe --always --dirty 2>/dev/null || echo "?")
        echo "$(basename "$FROM") git $d"
    else
        basename "$FROM"
    fi
}

tree_route() {
    host_install "building QEMU from source" "${BUILD_DEPS[@]}"
    local py; py=$(build_python)
    rm -f "$TDIR/stamp"
    mkdir -p "$TDIR"
    local B=$TDIR/build P=$TDIR/prefix log=$TDIR/logs
    mkdir -p "$log"
    say "copying the source $FROM (label $LABEL)"
    tree_copy "$B"
    QVERSION=$(tr -d ' \n' <"$B/VERSION")
    [[ "$QVERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
        die "$FROM: VERSION says '$QVERSION', not X.Y.Z"
    # Missing subprojects (a git archive, a tarball of a checkout): Debian's.
    local missing=() s
    for s in "${TREE_SUBPROJECTS[@]}"; do
        [ -d "$B/subprojects/$s" ] || missing+=("$s")
    done
    local added=""
    if [ ${#missing[@]} -gt 0 ]; then
        local spd; spd=$(debian_subprojects)
        for s in "${missing[@]}"; do
            [ -d "$spd/$s" ] || die "Debian's qemu $SUBPROJECTS_FROM source has no subprojects/$s either (CPRH_SUBPROJECTS_FROM names another version)"
            cp -a "$spd/$s" "$B/subprojects/$s"
        done
        added="${missing[*]} (Debian qemu $(basename "$spd"))"
        say "took the subprojects ${missing[*]} from Debian's qemu $(basename "$spd") source"
    fi
    meson_wheel "$B" "$log" "$py"
    # A tree with its firmware (upstream's pc-bios/) installs it; a blob-free one (Debian's
    # +ds) takes the host's.
    local extra=()
    if [ ! -f "$B/pc-bios/bios-256k.bin" ]; then
        extra+=(--disable-install-blobs
                --firmwarepath="$P/share/qemu:/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu")
    fi
    if grep -q -- '--disable-rust' "$B/scripts/meson-buildoptions.sh" 2>/dev/null; then
        extra+=(--disable-rust)
    fi
    build_install "$B" "$P" "$log" "$py" "$LABEL: $(tree_describe), built by get-qemu.sh" "${extra[@]}"
    local q=$P/bin/$BIN
    local instbytes; instbytes=$(du -sb "$P" | cut -f1)
    if [ "${CPRH_KEEP_BUILD:-0}" = 1 ]; then
        say "kept the build tree $B/build (CPRH_KEEP_BUILD=1)"
    else
        rm -rf "$B"
    fi
    local head=""
    if [ -d "$FROM" ]; then head=$(git -C "$FROM" rev-parse HEAD 2>/dev/null || true); fi
    write_stamp "$TDIR/stamp" "$q" "" tree "label=$LABEL" "source=$FROM" \
        "source_id=$(tree_source_id)" "git_head=$head" "subprojects_added=$added" "meson=$MESONV" \
        "make_seconds=$TBUILD" "build_tree_bytes=$BUILDBYTES" "install_bytes=$instbytes"
    say "ready in $(elapsed): QEMU $QVERSION labelled $LABEL from $FROM (make $TBUILD s, build tree $((BUILDBYTES / 1048576)) MB, install $((instbytes / 1048576)) MB)"
    printf '%s\n' "$q"
}
