#!/usr/bin/env bash
# setup_ref_venv.sh - makes the reference-oracle venv (torch, transformers,
# mlx-lm, llama-cpp-python) OUTSIDE the repo, at
#   ${VLLM_METAL_CACHE:-~/.cache/vllm-metal}/venv-ref
# Only the oracle scripts in scripts/oracles/ need it; CI never does.
# Needs Debian's python3-venv, build-essential and cmake (llama-cpp-python
# builds llama.cpp from source: several minutes on 2 cores). torch is the
# plain PyPI wheel (~2.5 GB with its CUDA deps; everything runs on the CPU).
set -euo pipefail
CACHE="${VLLM_METAL_CACHE:-$HOME/.cache/vllm-metal}"
V="$CACHE/venv-ref"

# The versions the committed goldens were made with (see README.md).
PACKAGES="numpy==2.4.6 torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3
safetensors==0.8.0 gguf==0.19.0 sentencepiece==0.2.3 accelerate==1.15.0 jinja2==3.1.6
mlx==0.32.4 mlx-cpu==0.32.4 mlx-lm==0.32.2"
LLAMA_CPP="llama-cpp-python==0.3.36"

mkdir -p "$CACHE"
[ -x "$V/bin/python" ] || /usr/bin/python3 -m venv "$V" 2>/dev/null || python3 -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q $PACKAGES
# GGML_NATIVE=ON: tuned for this CPU. The goldens were made on an x86-64 AMD
# EPYC (AVX2/FMA/F16C, no AVX-512); other SIMD paths can move llama.cpp's
# logits in the last digits and flip near ties (the goldens record margins).
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$V/bin/pip" install -q --no-cache-dir "$LLAMA_CPP"
"$V/bin/python" - <<'EOF'
import torch, transformers, mlx.core as mx, mlx_lm, llama_cpp, gguf, safetensors
print("venv-ref ok: torch", torch.__version__, "transformers", transformers.__version__,
      "mlx", mx.__version__, "llama-cpp-python", llama_cpp.__version__)
EOF
