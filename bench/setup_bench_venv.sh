#!/usr/bin/env bash
# setup_bench_venv.sh - the peers for `make bench`, from PyPI, in a venv OUTSIDE
# the repo: ${VLLM_METAL_CACHE:-~/.cache/vllm-metal}/venv-bench
#   llama-cpp-python[server]==0.3.36 built for this CPU (GGML_NATIVE=ON),
#   mlx[cpu] + mlx-lm (the MLX peer), gguf + safetensors (to build the MLX
#   conversion of the default model), and the sdist of llama-cpp-python kept
#   so bench/build_llama_server.sh can build llama.cpp's own server from it.
# When venv-ref (scripts/oracles/setup_ref_venv.sh) already has the same
# llama-cpp-python and mlx-lm, venv-bench layers on it through a .pth file
# (no 10-minute llama.cpp rebuild) and installs only the server extras; pip
# never touches venv-ref (it refuses to uninstall outside its environment).
# With the model file as $1, llama.cpp must also decode a few tokens of it: on
# a machine where its AMX matmul faults (seen in a sandbox VM whose Xeon lists
# AMX: a segfault at its first tile-config load), llama-cpp-python is rebuilt
# without AMX, and the marker $CACHE/llama-cpp-no-amx tells
# build_llama_server.sh to build the server the same way.
#   setup_bench_venv.sh [MODEL.gguf]
set -euo pipefail
MODEL="${1:-}"
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
V="$CACHE/venv-bench"
REF="$CACHE/venv-ref"
LLAMA_CPP_SERVER="llama-cpp-python[server]==0.3.36"   # (the extra goes before the version)
MLX="mlx==0.32.4 mlx-cpu==0.32.4 mlx-lm==0.32.2"
# The server extra of llama-cpp-python, spelled out for the layered case.
SERVER_EXTRA="uvicorn>=0.22.0 fastapi>=0.100.0 pydantic-settings>=2.0.1 sse-starlette>=1.6.1 starlette-context>=0.3.6,<0.4 PyYAML>=5.1"
TOOLS="gguf==0.19.0 safetensors==0.8.0 numpy aiohttp"

check() {
    "$V/bin/python" - <<'PY'
import llama_cpp, mlx.core as mx, mlx_lm, gguf, safetensors, aiohttp
import llama_cpp.server.app, uvicorn, sse_starlette
assert llama_cpp.__version__ == "0.3.36", llama_cpp.__version__
print("venv-bench ok: llama-cpp-python", llama_cpp.__version__, "mlx", mx.__version__,
      "mlx-lm", mlx_lm.__version__)
PY
}

# llama.cpp decodes 64 tokens of the model in a child process (0: ok or no
# model to try; 1: it died)
smoke() {
    [ -n "$MODEL" ] && [ -f "$MODEL" ] || return 0
    "$V/bin/python" - "$MODEL" <<'PY' >/dev/null 2>&1
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_batch=64, n_threads=2, verbose=False)
llm.eval(list(range(100, 164)))
PY
}
NO_AMX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"   # (GCC: explicit -mno-* win over -march=native)
rebuild_without_amx() {
    echo "venv-bench: llama.cpp died decoding $MODEL (its AMX matmul faults on this machine);" \
         "rebuilding llama-cpp-python without AMX (minutes)"
    CFLAGS="$NO_AMX_FLAGS" CXXFLAGS="$NO_AMX_FLAGS" CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$V/bin/pip" install -q --no-cache-dir --force-reinstall --no-deps "$LLAMA_CPP_SERVER"
    touch "$CACHE/llama-cpp-no-amx"
    smoke || { echo "venv-bench: llama.cpp still dies decoding $MODEL" >&2; exit 1; }
}

mkdir -p "$CACHE"
if [ -x "$V/bin/python" ] && check 2>/dev/null; then
    smoke || rebuild_without_amx
    exit 0
fi
[ -x "$V/bin/python" ] || /usr/bin/python3 -m venv "$V" 2>/dev/null || python3 -m venv "$V"

ref_ok=0
if [ -x "$REF/bin/python" ] && "$REF/bin/python" - 2>/dev/null <<'PY'
import importlib.metadata as md
assert md.version("llama_cpp_python") == "0.3.36"
assert md.version("mlx-lm").startswith("0.32") and md.version("gguf")
import llama_cpp, mlx.core
PY
then ref_ok=1; fi

if [ "$ref_ok" = 1 ]; then
    echo "venv-bench: layering on $REF (same llama-cpp-python 0.3.36 / mlx-lm); adding the server extra"
    site=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    refsite=$("$REF/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$refsite" > "$site/zz-venv-ref.pth"
    "$V/bin/pip" install -q $SERVER_EXTRA aiohttp
else
    echo "venv-bench: installing $LLAMA_CPP_SERVER (builds llama.cpp for this CPU: minutes) and mlx-lm"
    "$V/bin/pip" install -q --upgrade pip
    "$V/bin/pip" install -q $MLX $TOOLS
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$V/bin/pip" install -q --no-cache-dir "$LLAMA_CPP_SERVER"
fi
check
# (layered on venv-ref, the rebuilt package lands in venv-bench and shadows venv-ref's)
smoke || rebuild_without_amx
