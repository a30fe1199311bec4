"""The legacy `torch.ao.quantization` eager-mode QAT recipe, done correctly, and the mistakes that break it.

DEPRECATED: PyTorch deprecated `torch.ao.quantization` (eager and FX modes) in favour of torchao; its
quantized tensors (qint8 + packed fbgemm/x86 params) cannot be saved with safetensors, only compose with a
few hand-written kernels, and do not run on GPUs. The lab uses torchao (`labkit.quant.qat`); this module
only shows what the old recipe needed, because most tutorials online still use it.

The recipe, per selected Linear:
    1. wrap it in `QuantWrapper` = QuantStub -> Linear -> DeQuantStub: eager mode has no graph, so the
       float<->int8 boundaries must be written into the model by hand;
    2. give the wrapper a *QAT* qconfig (`get_default_qat_qconfig`: FakeQuantize modules), not the PTQ one
       (`get_default_qconfig`: observers only, so "QAT" would train without any fake quantization);
    3. embeddings: no qconfig (stay float) or their own weight-only qconfig (`default_embedding_qat_qconfig`);
       the Linear qconfig on an Embedding is rejected. Only the vocabulary table is given one here: the
       legacy `quantized.embedding_byte` kernel rejects non-contiguous indices, and BERT passes its
       token-type ids as an expanded (stride-0) buffer;
    4. `prepare_qat` in train mode, train, then `eval()` and `convert`.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from labkit.quant.selection import LayerSelection, resolve_layers

BACKEND = "x86"


def _prepare_train_convert_infer(m: nn.Module, batch: dict) -> None:
    """The legacy eager-mode steps in order: prepare_qat, one training forward, convert, one inference forward."""
    aq = _aq()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aq.prepare_qat(m, inplace=True)
        m(**batch)
        aq.convert(m.eval(), inplace=True)
    with torch.inference_mode():
        m(**batch)


def _aq():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as aq
    return aq


def _set_engine(backend: str) -> None:
    if backend not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {backend!r} is not in this PyTorch build: "
                           f"{torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend


def legacy_prepare_qat(model: nn.Module, layers: LayerSelection = None, *, embeddings: bool = True,
                       backend: str = BACKEND) -> nn.Module:
    """Eager-mode QAT prepare, done right: QuantWrapper per selected Linear, QAT qconfig, embeddings apart."""
    aq = _aq()
    _set_engine(backend)
    names = resolve_layers(model, layers)
    qconfig = aq.get_default_qat_qconfig(backend)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = aq.QuantWrapper(getattr(parent, attr))
        wrapped.qconfig = qconfig
        setattr(parent, attr, wrapped)
    if embeddings:  # the vocabulary table: the embedding with the most rows
        tables = {n: model.get_submodule(n) for n in resolve_layers(model, None, (nn.Embedding,))}
        vocab = max(tables, key=lambda n: tables[n].num_embeddings)
        tables[vocab].qconfig = aq.default_embedding_qat_qconfig
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aq.prepare_qat(model, inplace=True)
    return model


def legacy_convert(model: nn.Module) -> nn.Module:
    """eval() then convert: FakeQuantize + float weights -> quantized modules (qint8 weights, packed)."""
    aq = _aq()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aq.convert(model, inplace=True)
    return model


def legacy_quantized_modules(model: nn.Module) -> list[str]:
    """Modules converted to the legacy quantized kernels (torch.ao.nn.quantized.*)."""
    return [n for n, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
            and hasattr(m, "weight") and not isinstance(m, nn.Identity)]


def legacy_size_mb(model: nn.Module) -> float:
    """Bytes of `torch.save(state_dict)` (legacy packed params cannot go to safetensors), in MB."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


def _outcome(fn: Callable[[], str]) -> tuple[bool, str]:
    try:
        return True, fn()
    except Exception as err:  # noqa: BLE001 - we report exactly what the naive recipe raises
        return False, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"


def naive_mistakes(model: nn.Module, batch: Mapping[str, torch.Tensor], layers: LayerSelection = None,
                   backend: str = BACKEND) -> list[dict]:
    """Run the three classic mistakes on copies of `model` and report what actually happens (measured here)."""
    aq = _aq()
    _set_engine(backend)
    results = []

    def ptq_qconfig_for_qat() -> str:
        m = copy.deepcopy(model).train()
        for name in resolve_layers(m, layers):
            m.get_submodule(name).qconfig = aq.get_default_qconfig(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aq.prepare_qat(m, inplace=True)
        fq = [n for n, mod in m.named_modules() if isinstance(mod, aq.FakeQuantizeBase)]
        return (f"prepare_qat ran without complaint but inserted {len(fq)} FakeQuantize modules: the PTQ qconfig "
                "only observes, so training would never see INT8 rounding")

    def whole_model_qconfig() -> str:
        m = copy.deepcopy(model).train()
        m.qconfig = aq.get_default_qat_qconfig(backend)
        _prepare_train_convert_infer(m, batch)
        return "prepare, training forward, convert and inference all ran"

    def no_stubs() -> str:
        m = copy.deepcopy(model).train()
        for name in resolve_layers(m, layers):
            m.get_submodule(name).qconfig = aq.get_default_qat_qconfig(backend)
        _prepare_train_convert_infer(m, batch)
        return "the converted model ran"

    for title, fn in (
        ("PTQ qconfig (get_default_qconfig) given to prepare_qat", ptq_qconfig_for_qat),
        ("one QAT qconfig on the whole model, embeddings included", whole_model_qconfig),
        ("no QuantStub/DeQuantStub around the quantized Linears", no_stubs),
    ):
        ok, what = _outcome(fn)
        results.append({"mistake": title, "raised": not ok, "what_happened": what})
    return results
