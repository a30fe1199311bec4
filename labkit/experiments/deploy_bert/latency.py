"""The latency table: p10/p50/p90 of every variant at one thread count, rounds interleaved across variants."""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from labkit.experiments.deploy_bert.options import LABELS


def latency_inputs(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-length batch (every position a real token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _quantiles(ts: list[float]) -> dict:
    q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) >= 2 else [ts[0]] * 9
    return {"p10_ms": q[0], "p50_ms": statistics.median(ts), "p90_ms": q[-1], "n": len(ts)}


def latency_table(models: dict, artifacts: dict, threads: int, batch_sizes, seq_len: int, vocab: int,
                  rounds: int, repeat: int, warmup: int, on_row=None, compiled: bool = True) -> list[dict]:
    """p10/p50/p90 latency of every variant at `threads`, rounds interleaved across variants.

    models: {"torch-fp32": model, "torchao-int8": model}; compiled variants are added from them when
    `compiled`; artifacts: {"ort-...": path}. Returns one row per (variant, batch)."""
    from labkit.deploy.onnx_runtime import OnnxClassifier
    from labkit.experiments.qat_bert.latency import compile_settings

    torch.set_num_threads(threads)
    inputs = {b: latency_inputs(b, seq_len, vocab) for b in batch_sizes}
    fns, warm_s = {}, {}
    stack = contextlib.ExitStack()
    with stack, torch.inference_mode():
        if compiled:
            torch._dynamo.reset()
            stack.enter_context(compile_settings())
        for name, model in models.items():
            fns[name] = lambda x, m=model: m(**x)
            if compiled:
                fns[name + "-compiled"] = lambda x, f=torch.compile(model): f(**x)
        for name, path in artifacts.items():
            clf = OnnxClassifier(path, threads=threads, default_options=name == "ort-peer-int8")
            feeds = {b: clf.feeds(x) for b, x in inputs.items()}
            fns[name] = lambda x, c=clf, f=feeds: c.run(f[x["input_ids"].shape[0]])
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for x in inputs.values():
                for _ in range(warmup):
                    fn(x)
            warm_s[name] = round(time.perf_counter() - t0, 2)
        times = {n: {b: [] for b in inputs} for n in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                for b, x in inputs.items():
                    for _ in range(repeat):
                        t0 = time.perf_counter()
                        fn(x)
                        times[name][b].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name, per_b in times.items():
        for b, ts in per_b.items():
            row = {"variant": name, "label": LABELS.get(name, name), "threads": threads, "batch": b,
                   "seq_len": seq_len, **_quantiles(ts), "rounds": rounds, "repeat": repeat,
                   "warmup_s": warm_s[name]}
            rows.append(row)
            if on_row:
                on_row(row)
    if compiled:
        torch._dynamo.reset()
    return rows
