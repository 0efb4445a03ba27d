"""vllm_metal - Python bindings (ctypes) over libvllm_metal, vLLM's serving engine in C.

    from vllm_metal import Engine
    eng = Engine(model="HuggingFaceTB/SmolLM2-135M-Instruct")
    out = eng.generate("Hello", max_tokens=8, temperature=0)
    print(out["text"])

The seed's API: ``from vllm_metal.model_runner import MetalModelRunner``.
"""

from ._lib import VllmMetalError, library_path, lib_version
from .engine import Engine, resolve_model

__version__ = "0.1.0"
__all__ = ["Engine", "VllmMetalError", "resolve_model", "library_path", "lib_version", "__version__"]
