#!/usr/bin/env bash
# setup_arm64.sh - what `make test-arm64` needs on Debian 12 (x86-64 host):
# the aarch64 cross compiler, qemu-user, and an arm64 "sysroot" holding the
# arm64 builds of the libraries vllm-metal links (and criterion for the tests).
# Idempotent; separate from scripts/setup.sh (the default setup is untouched).
#
#   scripts/setup_arm64.sh deps      host packages (as root): gcc-aarch64-linux-gnu, qemu-user
#   scripts/setup_arm64.sh sysroot   arm64 -dev packages unpacked into $ARM64_SYSROOT
#   scripts/setup_arm64.sh all       both
#
# The sysroot is made without multiarch: the arm64 packages are fetched with a
# private apt state (arm64 only, under $CACHE/arm64-apt) and unpacked with
# dpkg -x, so dpkg's architectures and the installed amd64 -dev packages are
# left alone (libcriterion-dev:arm64 could not be co-installed with the amd64
# one when versions differ). Needs no root; the host's apt sources are used.
set -euo pipefail
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
SYSROOT="${ARM64_SYSROOT:-$CACHE/arm64-sysroot}"
APTDIR="$CACHE/arm64-apt"

HOST_PACKAGES="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
# arm64 -dev packages: what the Makefile links, plus criterion. Keep in step
# with DEB_PACKAGES in scripts/setup.sh (a library added there goes here too).
ARM64_PACKAGES="libjansson-dev libpcre2-dev libutf8proc-dev libmicrohttpd-dev
libcurl4-openssl-dev libcriterion-dev libjpeg62-turbo-dev libpng-dev libwebp-dev"
# Provided by the cross toolchain (libc6-dev-arm64-cross, gcc) or not needed.
EXCLUDE="libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 libcrypt-dev libgcc-s1
libstdc++6 gcc-12-base pkg-config pkgconf pkgconf-bin libpkgconf3 rpcsvc-proto
libnsl-dev libtirpc-dev libtirpc-common"

deps() {
    local missing=""
    for p in $HOST_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "setup_arm64: missing Debian packages:$missing (run as root or install them)" >&2
        exit 1
    fi
    echo "setup_arm64: installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

sysroot() {
    local stamp="$SYSROOT/.vllm-metal-$(echo "$ARM64_PACKAGES $EXCLUDE" | md5sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    echo "setup_arm64: making the arm64 sysroot in $SYSROOT"
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
    : > "$APTDIR/status"
    local apt=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64
               -o Dir::State::Lists="$APTDIR/lists" -o Dir::Cache="$APTDIR/cache"
               -o Dir::State::status="$APTDIR/status" -o Acquire::Languages=none
               -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
    apt-get "${apt[@]}" -qq update
    # every arm64 package the -dev packages need, less what the toolchain has
    local all pkgs=""
    all=$(apt-cache "${apt[@]}" depends --recurse --no-recommends --no-suggests \
            --no-conflicts --no-breaks --no-replaces --no-enhances $ARM64_PACKAGES |
          grep -v '^[ <]' | sort -u)
    for p in $all; do
        case " $(echo $EXCLUDE) " in *" $p "*) continue ;; esac
        pkgs="$pkgs $p"
    done
    (cd "$APTDIR/debs" && rm -f ./*.deb && apt-get "${apt[@]}" -qq download $pkgs)
    rm -rf "$SYSROOT"
    mkdir -p "$SYSROOT"
    for d in "$APTDIR"/debs/*.deb; do dpkg-deb -x "$d" "$SYSROOT"; done
    # absolute symlinks (/usr/lib/...) would point at the host: make them relative
    find "$SYSROOT" -type l -lname '/*' | while read -r l; do
        local t; t=$(readlink "$l")
        ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$SYSROOT$t")" "$l"
    done
    rm -f "$APTDIR"/debs/*.deb
    touch "$stamp"
}

case "${1:-all}" in
    deps) deps ;;
    sysroot) sysroot ;;
    all) deps; sysroot ;;
    *) echo "usage: $0 [deps|sysroot|all]" >&2; exit 2 ;;
esac
