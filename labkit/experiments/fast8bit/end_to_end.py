"""Decode and prefill parts: the 7B shape end to end (random weights), bf16 against 8-bit feed-forward layers."""

from __future__ import annotations

import traceback

import torch

from labkit.experiments.fast8bit.block import kernel_check, quantize_variant
from labkit.experiments.fast8bit.common import ALL_LINEAR, FEED_FORWARD, _error, _free, _is_oom


def _build(shape: str, variant: str, attn: str):
    from labkit.models import build_from_shape

    model = build_from_shape(shape, dtype=torch.bfloat16, device="cuda", attn_implementation="sdpa")
    if attn == "fa2":
        from labkit.attention import set_backend

        set_backend(model, "fa2")
    layers = ALL_LINEAR if variant.endswith("-all") else FEED_FORWARD
    quantize_variant(model, variant, layers)
    return model


def _weight_gib(model) -> float:
    from labkit.quant.size import weight_bytes

    return weight_bytes(model) / 2**30


def decode_part(record, args, variants) -> None:
    from labkit.measure.generation import static_cache_decode

    for variant in variants:
        for compiled in ((True,) if args.no_eager else (False, True)):
            if record.done(part="decode", variant=variant, compiled=compiled) is not None:
                continue  # measured by an earlier attempt of this run
            base = {"part": "decode", "model": args.shape, "weights": "random (speed only)", "variant": variant,
                    "compiled": compiled, "attention": "sdpa (static cache passes a mask; the flash kernel takes none)"}
            model = None
            try:
                torch._dynamo.reset()
                model = _build(args.shape, variant, "sdpa")
                base["weight_gib"] = _weight_gib(model)
                repeat = args.decode_repeat if compiled else max(2, args.decode_repeat // 2)
                try:
                    r = static_cache_decode(model, args.prompt, args.new_tokens, compiled=compiled, repeat=repeat,
                                            profile_step=True)
                except Exception as err:  # noqa: BLE001 - a graph break: measure it anyway, and say so
                    if not compiled or _is_oom(err):
                        raise
                    base["fullgraph_error"] = _error(err)
                    torch._dynamo.reset()
                    r = static_cache_decode(model, args.prompt, args.new_tokens, compiled=True, repeat=repeat,
                                            fullgraph=False, profile_step=True)
                kernels = r.pop("kernels")
                record({**base, "ok": True, **r, "kernels": kernels[:10], **kernel_check(variant, 1, kernels)})
            except Exception as err:  # noqa: BLE001
                record({**base, "ok": False, "oom": _is_oom(err), "error": _error(err),
                        "traceback": traceback.format_exc(limit=6)})
            del model
            torch._dynamo.reset()
            _free()


def prefill_part(record, args, variants) -> None:
    from labkit.measure.generation import compiled_prefill, cuda_kernels, random_ids
    from labkit.quant.fp8 import fp8_unavailable_reason

    n = args.prefill_len
    for variant in variants:
        base = {"part": "prefill", "model": args.shape, "weights": "random (speed only)", "variant": variant,
                "seq_len": n, "attention": "fa2",
                "layers": "all linear in the blocks" if variant.endswith("-all") else
                ("feed-forward" if variant != "bf16" else None)}
        eager = not args.no_eager and record.done(part="prefill", variant=variant, compiled=False) is None
        compiled = record.done(part="prefill", variant=variant, compiled=True) is None
        if record.done(part="prefill", variant=variant, compiled=None) is not None or not (eager or compiled):
            continue  # measured (or skipped) by an earlier attempt of this run
        if variant.startswith("fp8") and (why := fp8_unavailable_reason("cuda")):
            record({**base, "ok": False, "skipped": why})
            continue
        model = None
        try:
            torch._dynamo.reset()
            model = _build(args.shape, variant, "fa2")
            base["weight_gib"] = _weight_gib(model)
            if eager:
                try:
                    r = compiled_prefill(model, n, compiled=False, budget_s=3.0)
                    record({**base, "ok": True, **r})
                except Exception as err:  # noqa: BLE001
                    record({**base, "compiled": False, "ok": False, "oom": _is_oom(err), "error": _error(err)})
                _free()
            if compiled:
                r = compiled_prefill(model, n, compiled=True, budget_s=4.0)
                ids = random_ids(model, n)
                kernels = cuda_kernels(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), warmup=0)
                record({**base, "ok": True, **r, "compile_mode": "default, per decoder layer",
                        "kernels": kernels[:10], **kernel_check(variant, n, kernels)})
        except Exception as err:  # noqa: BLE001
            record({**base, "compiled": True, "ok": False, "oom": _is_oom(err), "error": _error(err),
                    "traceback": traceback.format_exc(limit=6)})
        del model
        torch._dynamo.reset()
        _free()
