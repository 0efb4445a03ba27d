"""Engine: one loaded model (libvllm_metal's vllm_metal_engine)."""

import ctypes
import json
import threading

from ._lib import VllmMetalError, last_error, lib, take_string

# vLLM SamplingParams names the C API understands.
SAMPLING_KEYS = (
    "n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "seed", "max_tokens", "min_tokens", "ignore_eos", "logprobs", "stop",
    "stop_token_ids", "skip_special_tokens", "include_stop_str_in_output", "logit_bias",
    "allowed_token_ids", "bad_words",
)


def _ids_array(ids):
    ids = [int(i) for i in ids]
    return (ctypes.c_int32 * max(len(ids), 1))(*ids), len(ids)


def resolve_model(name):
    """A local path as is, or a Hugging Face Hub name (org/name[@rev][:file.gguf]) downloaded
    into the HF cache; returns the local path."""
    return take_string(lib().vllm_metal_resolve_model(str(name).encode()))


class Engine:
    """A loaded model. Engine arguments use vLLM's names (model, max_model_len, block_size,
    max_num_seqs, max_num_batched_tokens, enable_prefix_caching, gpu_memory_utilization,
    num_kv_blocks, max_logprobs, threads, chat_template). Thread-safe: concurrent calls
    are batched together by the engine."""

    def __init__(self, model, **engine_args):
        args = {"model": str(model)}
        args.update({k: v for k, v in engine_args.items() if v is not None})
        self._lib = lib()
        self._lock = threading.Lock()
        self._h = self._lib.vllm_metal_engine_create(json.dumps(args).encode())
        if not self._h:
            raise VllmMetalError(last_error())
        self.info = json.loads(take_string(self._lib.vllm_metal_engine_info(self._h)))

    # -- lifetime
    def close(self):
        with self._lock:
            h, self._h = self._h, None
        if h:
            self._lib.vllm_metal_engine_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _handle(self):
        if not self._h:
            raise VllmMetalError("the engine is closed")
        return self._h

    # -- generation
    @staticmethod
    def _params(params, kwargs):
        p = dict(params or {})
        p.update(kwargs)
        unknown = sorted(set(p) - set(SAMPLING_KEYS))
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        return json.dumps({k: v for k, v in p.items() if v is not None}).encode()

    def generate(self, prompt=None, params=None, *, prompt_token_ids=None, messages=None,
                 add_generation_prompt=True, chat_template_kwargs=None, images=None, **sampling):
        """Runs one request; returns the result dict (text, token_ids, finish_reason,
        stop_reason, prompt_token_ids, usage[, logprobs]).
        images (vision-language models): file paths, http(s)/data: URLs or bytes; the
        prompt holds one <|image_pad|> per image, or none (then they go first)."""
        req = {}
        if images:
            req["images"] = [_image_source(im) for im in images]
        if prompt is not None:
            req["prompt"] = prompt
        if prompt_token_ids is not None:
            req["prompt_token_ids"] = [int(i) for i in prompt_token_ids]
        if messages is not None:
            req["messages"] = messages
            req["add_generation_prompt"] = bool(add_generation_prompt)
            if chat_template_kwargs:
                req["chat_template_kwargs"] = chat_template_kwargs
        out = self._lib.vllm_metal_generate(self._handle(), json.dumps(req).encode(),
                                            self._params(params, sampling))
        return json.loads(take_string(out))

    def chat(self, messages, params=None, **sampling):  # image_url parts: use the server
        return self.generate(messages=messages, params=params, **sampling)

    def generate_ids(self, prompt_token_ids, params=None, **sampling):
        """Token ids in, (generated ids, finish_reason) out."""
        arr, n = _ids_array(prompt_token_ids)
        cap = 256
        while True:
            out = (ctypes.c_int32 * cap)()
            fr = ctypes.create_string_buffer(16)
            got = self._lib.vllm_metal_generate_ids(self._handle(), arr, n, self._params(params, sampling),
                                                    out, cap, fr, 16)
            if got < 0:
                raise VllmMetalError(last_error())
            if got <= cap:
                return list(out[:got]), fr.value.decode()
            cap = got  # rare: rerun with room (deterministic only for greedy or seeded requests)

    # -- tokenizer
    def tokenize(self, text, add_special_tokens=True):
        cap = max(16, len(text.encode()) + 8)
        out = (ctypes.c_int32 * cap)()
        n = self._lib.vllm_metal_tokenize(self._handle(), text.encode(), int(bool(add_special_tokens)), out, cap)
        if n < 0:
            raise VllmMetalError(last_error())
        if n > cap:
            out = (ctypes.c_int32 * n)()
            n = self._lib.vllm_metal_tokenize(self._handle(), text.encode(), int(bool(add_special_tokens)), out, n)
        return list(out[:n])

    def detokenize(self, ids, skip_special_tokens=True):
        arr, n = _ids_array(ids)
        return take_string(self._lib.vllm_metal_detokenize(self._handle(), arr, n, int(bool(skip_special_tokens))))

    def apply_chat_template(self, messages, add_generation_prompt=True, **kwargs):
        req = dict(kwargs)
        req.update(messages=messages, add_generation_prompt=bool(add_generation_prompt))
        return take_string(self._lib.vllm_metal_apply_chat_template(self._handle(), json.dumps(req).encode()))

    def stats(self):
        return json.loads(take_string(self._lib.vllm_metal_engine_stats(self._handle())))


def _image_source(im):
    """An image for the C API: bytes become a data: URL; str / os.PathLike pass as given."""
    import base64
    import os
    if isinstance(im, (bytes, bytearray, memoryview)):
        return "data:application/octet-stream;base64," + base64.b64encode(bytes(im)).decode()
    if isinstance(im, os.PathLike):
        return os.fspath(im)
    if isinstance(im, str):
        return im
    raise TypeError(f"an image must be a path, a URL or bytes, not {type(im).__name__}")
