#!/usr/bin/env bash
# install.sh - installs vllm-metal from this checkout: dependencies (apt on
# Debian/Ubuntu, Homebrew on macOS), the build, and then into a prefix:
#   <prefix>/bin/vllm-metal
#   <prefix>/lib/libvllm_metal.{so,a}, <prefix>/lib/pkgconfig/vllm-metal.pc
#   <prefix>/include/vllm_metal.h
#   <prefix>/lib/pythonX.Y/site-packages/vllm_metal   (the Python package)
#
# usage: ./install.sh [--prefix DIR] [--build-dir DIR] [--no-deps] [--jobs N]
#   PREFIX=DIR ./install.sh        same as --prefix (default ~/.local)
#   BUILD=DIR                      build folder (default build/; an up-to-date one is reused)
#   PYTHON=python3                 the Python whose package layout is used
# Idempotent: running it again rebuilds what changed and reinstalls the same files.
set -euo pipefail

PREFIX="${PREFIX:-$HOME/.local}"
BUILD="${BUILD:-build}"
PYTHON="${PYTHON:-python3}"
DEPS=1
JOBS="$( (command -v nproc >/dev/null && nproc) || sysctl -n hw.ncpu 2>/dev/null || echo 4)"

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --build-dir) BUILD="$2"; shift 2 ;;
        --build-dir=*) BUILD="${1#*=}"; shift ;;
        --no-deps) DEPS=0; shift ;;
        --jobs|-j) JOBS="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -f "$SRC/Makefile" ] || [ ! -f "$SRC/include/vllm_metal.h" ]; then
    echo "install.sh: run it from a vllm-metal checkout (no Makefile beside it in $SRC)" >&2
    exit 1
fi
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
say() { printf 'install.sh: %s\n' "$*"; }

# ------------------------------------------------------------------ dependencies
DEB_PACKAGES="build-essential pkg-config python3 libjansson-dev libpcre2-dev libutf8proc-dev
libmicrohttpd-dev libcurl4-openssl-dev libopenblas-dev"
BREW_PACKAGES="pkg-config jansson pcre2 utf8proc libmicrohttpd curl openblas"

deps_debian() {
    local missing=""
    for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -z "$missing" ]; then say "dependencies: all present"; return 0; fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then sudo="sudo"
        else echo "install.sh: missing Debian packages:$missing (run as root, or install them, or --no-deps)" >&2; exit 1
        fi
    fi
    say "installing Debian packages:$missing"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

deps_macos() {
    if ! command -v brew >/dev/null; then
        echo "install.sh: Homebrew is needed on macOS (https://brew.sh), or install:" \
             "$BREW_PACKAGES and use --no-deps" >&2
        exit 1
    fi
    xcode-select -p >/dev/null 2>&1 || { echo "install.sh: run 'xcode-select --install' first" >&2; exit 1; }
    local missing=""
    for p in $BREW_PACKAGES; do brew list --versions "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -z "$missing" ]; then say "dependencies: all present"
    else
        say "brew install$missing"
        brew install $missing
    fi
    # keg-only formulae (curl, openblas) need their pkg-config folders, installed now or before
    export PKG_CONFIG_PATH="$(brew --prefix curl)/lib/pkgconfig:$(brew --prefix openblas)/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
}

if [ "$DEPS" = 1 ]; then
    case "$(uname -s)" in
        Linux)
            if command -v dpkg >/dev/null && command -v apt-get >/dev/null; then deps_debian
            else say "not a Debian system: make sure a C11 compiler, pkg-config, jansson, pcre2, utf8proc, libmicrohttpd and libcurl (with headers) are installed (OpenBLAS optional: faster prefill)"
            fi ;;
        Darwin) deps_macos ;;
        *) say "unknown system $(uname -s): skipping dependencies" ;;
    esac
else
    say "dependencies: skipped (--no-deps)"
fi
command -v "$PYTHON" >/dev/null || { echo "install.sh: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }

# ------------------------------------------------------------------ build + install
MAKE="make --no-print-directory -C $SRC -f Makefile -f mk/install.mk BUILD=$BUILD"
say "building in $BUILD ($JOBS jobs)"
$MAKE -j"$JOBS" all >/dev/null
say "installing into $PREFIX"
$MAKE PREFIX="$PREFIX" PYTHON="$PYTHON" install | tail -n 1

SITE="$("$PYTHON" -c 'import sysconfig,sys; print(sysconfig.get_path("purelib", "posix_prefix", vars={"base": sys.argv[1], "platbase": sys.argv[1]}))' "$PREFIX")"
VERSION="$("$PREFIX/bin/vllm-metal" --version 2>/dev/null || echo "vllm-metal (version unknown)")"

cat <<EOF

$VERSION installed:
  $PREFIX/bin/vllm-metal
  $PREFIX/lib/libvllm_metal.so, libvllm_metal.a
  $PREFIX/include/vllm_metal.h
  $PREFIX/lib/pkgconfig/vllm-metal.pc
  $SITE/vllm_metal (Python)

Start a server (OpenAI API on port 8000; a Hub name downloads into ~/.cache/huggingface):
  $PREFIX/bin/vllm-metal --model HuggingFaceTB/SmolLM2-135M-Instruct
EOF
case ":$PATH:" in *":$PREFIX/bin:"*) ;; *) echo "  (add $PREFIX/bin to PATH: export PATH=\"$PREFIX/bin:\$PATH\")" ;; esac
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.argv[1] in sys.path else 1)' "$SITE" 2>/dev/null; then
    echo "Python: export PYTHONPATH=\"$SITE\${PYTHONPATH:+:\$PYTHONPATH}\""
fi
cat <<EOF
  $PYTHON -c 'from vllm_metal.model_runner import MetalModelRunner; r = MetalModelRunner({"model_config": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}}); r.load_model(); print(r.generate("Hello,", max_tokens=16))'
C: cc app.c \$(PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig pkg-config --cflags --libs vllm-metal)
EOF
