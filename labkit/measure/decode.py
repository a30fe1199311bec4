"""Decode speed: greedy decoding with a KV cache, tokens per second of the decode steps only."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from labkit.measure.prefill import random_input_ids
from labkit.measure.timing import p10_p90


def decode_tokens_per_s(model: nn.Module, prompt_len: int = 128, new_tokens: int = 64, repeat: int = 3,
                        seed: int = 0) -> dict:
    """Greedy decoding with a KV cache after a `prompt_len` random prompt: tokens per second of the decode
    steps only (prefill excluded), median of `repeat` runs after one full warm-up run (the first variant
    measured must not pay for one-off kernel set-up that the later ones reuse)."""
    device = next(model.parameters()).device
    ids = random_input_ids(model, prompt_len, 1, seed)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(n: int) -> float:
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        sync()
        return n / (time.perf_counter() - t0)

    with torch.inference_mode():
        run(new_tokens)
        rates = [run(new_tokens) for _ in range(repeat)]
    p10, p90 = p10_p90(rates)
    return {"decode_tok_s": statistics.median(rates), "decode_tok_s_p10": p10, "decode_tok_s_p90": p90,
            "decode_repeats": repeat, "decode_prompt": prompt_len, "decode_tokens": new_tokens}
