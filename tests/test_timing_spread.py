"""Every timing carries its spread: enough repeats at every length, untimed hooks between calls (L2 eviction on a
GPU), decode speed with p10/p90."""

from __future__ import annotations

import torch

from labkit.measure.prefill import MIN_REPEATS, default_repeats
from labkit.measure.timing import l2_flusher, time_callable


def test_enough_repeats_at_every_length():
    for device in ("cpu", "cuda"):
        for n in (128, 4096, 8192, 16384, 32768, 131072):
            warmup, repeat = default_repeats(n, device)
            assert repeat >= MIN_REPEATS >= 5 and warmup >= 1, (device, n, repeat)


def test_between_hook_runs_untimed_before_every_call():
    calls = []
    t = time_callable(lambda: calls.append("fn"), warmup=2, repeat=4, between=lambda: calls.append("hook"))
    assert calls == ["fn", "fn"] + ["hook", "fn"] * 4
    assert t.repeats == 4 and t.p10_ms <= t.median_ms <= t.p90_ms


def test_l2_flush_is_a_gpu_thing():
    assert l2_flusher("cpu") is None
    t = time_callable(lambda: torch.ones(4).sum(), warmup=0, repeat=3, flush_l2=True)  # a no-op on the CPU
    assert t.repeats == 3


def test_decode_reports_its_spread():
    from labkit.measure.decode import decode_tokens_per_s
    from labkit.models import build_from_shape

    model = build_from_shape("tiny-llama", dtype=torch.float32, device="cpu", num_layers=1)
    d = decode_tokens_per_s(model, prompt_len=8, new_tokens=3, repeat=3)
    assert d["decode_repeats"] == 3 and d["decode_tok_s_p10"] <= d["decode_tok_s"] <= d["decode_tok_s_p90"]
