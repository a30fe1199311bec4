"""The causal-LM fine-tune loop QAT and its float baseline share: same data order, schedule and clipping."""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm


def fine_tune(
    model: nn.Module,
    blocks: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_frac: float = 0.1,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    freeze_embeddings: bool = True,
    progress: bool = True,
    desc: str = "fine-tune",
) -> list[float]:
    """Causal-LM fine-tune (AdamW, linear warm-up then cosine decay, grad-norm clip 1.0); returns the losses.

    The batch order depends only on `seed`, so two models fine-tuned with the same arguments see the same
    data in the same order: this is what makes the float baseline and QAT comparable.
    """
    if steps < 1:
        return []
    device = next(model.parameters()).device
    if freeze_embeddings:
        for mod in model.modules():
            if isinstance(mod, nn.Embedding):
                mod.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, int(steps * warmup_frac))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    order = torch.cat([torch.randperm(len(blocks), generator=gen) for _ in range(math.ceil(need / len(blocks)))])
    losses: list[float] = []
    model.train()
    try:
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=True)
        for step in bar:
            ids = blocks[order[step * batch_size:(step + 1) * batch_size]].to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        model.eval()
        opt.zero_grad(set_to_none=True)
    return losses
