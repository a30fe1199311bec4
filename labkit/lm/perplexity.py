"""Perplexity of a causal LM on WikiText-2 blocks (validation fine-tunes, test measures)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit.data import lm_token_blocks, wikitext2_lines


def wikitext_blocks(tokenizer, split: str, seq_len: int, max_blocks: int | None = None,
                    data_dir=None) -> torch.Tensor:
    """WikiText-2 `split` as [n_blocks, seq_len] token ids (labkit.data; works without `datasets` too)."""
    return lm_token_blocks({"text": wikitext2_lines(split, data_dir)}, tokenizer, seq_len, max_blocks)


@torch.no_grad()
def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean next-token NLL) over every predicted token of `blocks` ([n, seq_len] token ids)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(blocks), batch_size), desc="perplexity", disable=not progress, leave=True):
        ids = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
        del logits
    return math.exp(nll / count)
