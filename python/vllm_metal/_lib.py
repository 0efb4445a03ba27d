"""Finds and loads libvllm_metal, declares the C API's signatures (include/vllm_metal.h)."""

import ctypes
import ctypes.util
import os
import sys

_NAMES = ("libvllm_metal.dylib", "libvllm_metal.so") if sys.platform == "darwin" else ("libvllm_metal.so",)


class VllmMetalError(RuntimeError):
    """An error reported by libvllm_metal; str() is the library's message."""


def _candidates():
    env = os.environ.get("VLLM_METAL_LIB")
    if env:
        yield env  # explicit: only this one
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for n in _NAMES:
        yield os.path.join(here, n)
    # installed into <prefix>/lib/pythonX.Y/site-packages/vllm_metal: the library is in <prefix>/lib
    try:
        from . import _prefix  # written by make install / install.sh
        for n in _NAMES:
            yield os.path.join(_prefix.PREFIX, "lib", n)
    except ImportError:
        pass
    d = here
    for _ in range(4):
        d = os.path.dirname(d)
        for n in _NAMES:
            yield os.path.join(d, n)
            yield os.path.join(d, "lib", n)
    for n in _NAMES:
        yield os.path.join(sys.prefix, "lib", n)
    found = ctypes.util.find_library("vllm_metal")
    if found:
        yield found


_lib = None
_path = None


def _declare(lib):
    c_char_p, c_void_p, c_int, c_size_t = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    i32p = ctypes.POINTER(ctypes.c_int32)
    sigs = {
        "vllm_metal_version": (c_char_p, []),
        "vllm_metal_api_version": (c_int, []),
        "vllm_metal_last_error": (c_char_p, []),
        "vllm_metal_free": (None, [c_void_p]),
        "vllm_metal_engine_create": (c_void_p, [c_char_p]),
        "vllm_metal_engine_free": (None, [c_void_p]),
        "vllm_metal_engine_info": (c_void_p, [c_void_p]),
        "vllm_metal_engine_stats": (c_void_p, [c_void_p]),
        "vllm_metal_generate": (c_void_p, [c_void_p, c_char_p, c_char_p]),
        "vllm_metal_generate_ids": (c_int, [c_void_p, i32p, c_int, c_char_p, i32p, c_int, c_char_p, c_size_t]),
        "vllm_metal_tokenize": (c_int, [c_void_p, c_char_p, c_int, i32p, c_int]),
        "vllm_metal_detokenize": (c_void_p, [c_void_p, i32p, c_int, c_int]),
        "vllm_metal_apply_chat_template": (c_void_p, [c_void_p, c_char_p]),
        "vllm_metal_resolve_model": (c_void_p, [c_char_p]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args


def lib():
    """The loaded library (loads it on first use)."""
    global _lib, _path
    if _lib is not None:
        return _lib
    tried = []
    for p in _candidates():
        if not p or p in tried:
            continue
        tried.append(p)
        if os.path.sep in p and not os.path.exists(p):
            continue
        try:
            l = ctypes.CDLL(p)
            _declare(l)
        except (OSError, AttributeError) as exc:
            if os.environ.get("VLLM_METAL_LIB"):
                raise VllmMetalError(f"cannot load VLLM_METAL_LIB={p}: {exc}") from None
            continue
        _lib, _path = l, p
        return l
    raise VllmMetalError(
        "libvllm_metal not found (set VLLM_METAL_LIB to its path; looked in: " + ", ".join(tried) + ")"
    )


def library_path():
    lib()
    return _path


def lib_version():
    return lib().vllm_metal_version().decode()


def last_error():
    msg = lib().vllm_metal_last_error()
    return msg.decode("utf-8", "replace") if msg else "unknown error"


def take_string(ptr):
    """Copies a malloc'd char* from the library and frees it; raises on NULL."""
    if not ptr:
        raise VllmMetalError(last_error())
    try:
        return ctypes.string_at(ptr).decode("utf-8", "replace")
    finally:
        lib().vllm_metal_free(ptr)
