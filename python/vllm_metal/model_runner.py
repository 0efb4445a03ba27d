"""MetalModelRunner - the seed project's Python entry point, over libvllm_metal.

    class MinimalConfig:
        class ModelConfig:
            def __init__(self, model):
                self.model = model
        def __init__(self, model):
            self.model_config = self.ModelConfig(model)

    runner = MetalModelRunner(MinimalConfig("HuggingFaceTB/SmolLM2-135M-Instruct"))
    runner.load_model()
    text = runner.generate("Hello", max_tokens=10)

The config may be any object with .model_config.model (a vLLM VllmConfig, the
seed's MinimalConfig, a SimpleNamespace), a dict {"model_config": {"model": ...}}
or {"model": ...}, or the model name itself.
"""

import logging

from ._lib import VllmMetalError
from .engine import Engine

logger = logging.getLogger(__name__)

# model_config fields passed on to the engine when present
_ENGINE_FIELDS = ("max_model_len",)


def _get(obj, key):
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _model_config(cfg):
    if isinstance(cfg, (str, bytes)) or hasattr(cfg, "__fspath__"):
        return {"model": cfg}
    mc = _get(cfg, "model_config")
    if mc is None and _get(cfg, "model") is not None:
        mc = cfg  # {"model": ...} or an object with .model
    if mc is None:
        raise ValueError("MetalModelRunner: the config has no model_config.model (the model path or Hub name)")
    return mc


class MetalModelRunner:
    """Loads a model (local path or Hugging Face Hub name) and generates text."""

    def __init__(self, vllm_config, **engine_args):
        self.vllm_config = vllm_config
        mc = _model_config(vllm_config)
        model = _get(mc, "model")
        if not model:
            raise ValueError("MetalModelRunner: model_config.model is empty")
        if isinstance(model, bytes):
            model = model.decode()
        self.model_name = str(model)
        self.engine_args = {}
        for f in _ENGINE_FIELDS:
            v = _get(mc, f)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                self.engine_args[f] = v
        # one generate() at a time needs few sequences; a small max_num_seqs keeps the
        # KV cache the engine sizes from free memory ("auto") small
        sc = _get(vllm_config, "scheduler_config") if not isinstance(vllm_config, (str, bytes)) else None
        seqs = _get(sc, "max_num_seqs") if sc is not None else None
        self.engine_args["max_num_seqs"] = seqs if isinstance(seqs, int) and seqs > 0 else 4
        self.engine_args.update(engine_args)
        self.engine = None
        self.model = None       # the loaded Engine (the seed keeps its MLX model here)
        self.tokenizer = None   # a small tokenizer object: encode / decode / apply_chat_template
        self.model_config = None

    def load_model(self):
        """Loads the model (downloading it from the Hub when given a Hub name)."""
        logger.info("Loading model: %s", self.model_name)
        self.engine = Engine(self.model_name, **self.engine_args)
        self.model = self.engine
        self.tokenizer = _Tokenizer(self.engine)
        self.model_config = dict(self.engine.info)
        logger.info("Model loaded: %s", self.model_name)

    def _require(self):
        if self.engine is None:
            raise RuntimeError("Model and tokenizer must be loaded (call load_model() first)")
        return self.engine

    def generate(self, prompt, images=None, max_tokens=100, temperature=0.0, top_p=None, top_k=None,
                 seed=None, stop=None, **kwargs):
        """Generates a completion of the raw prompt text; returns the generated text.
        temperature 0 is greedy. Other vLLM sampling parameters pass through kwargs.
        images (vision-language models such as Qwen2-VL): paths, http(s)/data: URLs or
        bytes; the prompt holds one <|image_pad|> per image (inside
        <|vision_start|>...<|vision_end|>), or none and the images go first."""
        eng = self._require()
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a string")
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        out = eng.generate(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                           seed=seed, stop=stop, images=list(images) if images else None, **kwargs)
        return out["text"]

    def chat(self, messages, max_tokens=100, temperature=0.0, **kwargs):
        """Applies the model's chat template to messages and generates; returns the text."""
        return self._require().chat(messages, max_tokens=max_tokens, temperature=temperature, **kwargs)["text"]

    def __del__(self):
        eng, self.engine, self.model = getattr(self, "engine", None), None, None
        if eng is not None:
            try:
                eng.close()
            except Exception:
                pass


class _Tokenizer:
    def __init__(self, engine):
        self._engine = engine

    def encode(self, text, add_special_tokens=True):
        return self._engine.tokenize(text, add_special_tokens)

    def decode(self, ids, skip_special_tokens=True):
        return self._engine.detokenize(ids, skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, **kwargs):
        text = self._engine.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self._engine.tokenize(text, add_special_tokens=False) if tokenize else text


__all__ = ["MetalModelRunner", "VllmMetalError"]
