"""Checks of notebook 04's exercises: the training-memory arithmetic of QAT at 7B and the data-parallel slice of a
global batch, against `labkit.train.memory_model` and `labkit.train.fsdp_qat`."""

from __future__ import annotations

import torch

from labkit.exercises import answer_value, call_answer, claim
from labkit.train.memory_model import ModelShape, TrainSetup, training_breakdown


def _states_bytes(name: str, world_size: int) -> int:
    p = training_breakdown(ModelShape.named(name), 4096, TrainSetup(world_size=world_size))
    return p["master_weights"] + p["gradients"] + p["optimizer"]


def check_states_per_gpu(states_bytes_per_gpu, gpus_for_states=None) -> None:
    """`states_bytes_per_gpu(params, trainable, world_size)`: fp32 master weights, fp32 gradients and AdamW's two fp32
    moments per GPU under FSDP2; `gpus_for_states`: the fewest 24 GB GPUs whose share of llama-2-7b's fits (states
    only; activations and working weights come on top)."""
    for name in ("llama-2-7b", "llama-3-8b", "smollm2-135m"):
        shape = ModelShape.named(name)
        trainable = shape.parameters() - shape.vocab * shape.hidden  # embeddings frozen
        for n in (1, 2, 8):
            got = call_answer(states_bytes_per_gpu, "states_bytes_per_gpu", shape.parameters(), trainable, n)
            claim(f"{name}, {n} GPU(s): states bytes per GPU", int(got), _states_bytes(name, n), tol=n + 1,
                  hint="every parameter keeps an fp32 master copy (4 bytes); only trainable ones have an fp32 "
                       "gradient (4) and two fp32 AdamW moments (8); FSDP2 divides all three by the GPUs")
    n = answer_value(gpus_for_states, "gpus_for_states")
    want = next(k for k in range(1, 65) if _states_bytes("llama-2-7b", k) <= 24e9)
    claim("llama-2-7b: fewest 24 GB GPUs whose share of the states fits", int(n), want,
          hint="the smallest N with states / N <= 24e9: round up, and use your function's llama-2-7b numbers")


def check_pure_bf16(bytes_per_param, fp32_master_extra_gb) -> None:
    """Pure-bf16 AdamW's bytes per trainable parameter, and what the fp32-master recipe costs on top for llama-2-7b
    (frozen embeddings, one GPU), in GB."""
    b = answer_value(bytes_per_param, "pure_bf16_bytes_per_param")
    extra = answer_value(fp32_master_extra_gb, "fp32_master_extra_gb")
    claim("pure bf16: bytes per trainable parameter", b, 8,
          hint="weight, gradient, exp_avg and exp_avg_sq, 2 bytes each")
    s = ModelShape.named("llama-2-7b")
    pure = (2 * s.parameters() + 6 * (s.parameters() - s.vocab * s.hidden)) / 1e9  # frozen embedding: weight only
    states = _states_bytes("llama-2-7b", 1) / 1e9
    claim("fp32-master states minus pure-bf16 states, llama-2-7b, GB", float(extra), states - pure, tol=0.5,
          hint="fp32 master (4) + grad (4) + moments (8) = 16 bytes per trainable parameter against 8; the frozen "
               "embedding keeps its weight only (4 bytes against 2)")


def check_local_batch(my_blocks) -> None:
    """`my_blocks(order, step, rank, world_size, global_batch)` == the indices `fsdp_qat.local_batch` trains rank
    `rank` on, for every rank and several steps."""
    from labkit.train import fsdp_qat

    blocks = torch.arange(100).view(100, 1).expand(100, 4)  # block i holds the token i
    for world_size, global_batch in ((4, 8), (2, 6), (1, 3)):
        cfg = fsdp_qat.TrainConfig(global_batch=global_batch, steps=10, seq_len=4)
        order = fsdp_qat.batch_order(len(blocks), cfg)
        for step in (0, 5, 9):
            got = [[int(i) for i in call_answer(my_blocks, "my_blocks", order, step, rank, world_size, global_batch)]
                   for rank in range(world_size)]
            want = [fsdp_qat.local_batch(blocks, order, step, cfg, rank, world_size)[:, 0].tolist()
                    for rank in range(world_size)]
            claim(f"blocks of every rank, {world_size} process(es), global batch {global_batch}, step {step}", got,
                  want, hint="each rank takes global_batch / world_size consecutive entries of `order`, starting at "
                             "step * global_batch + rank * (global_batch / world_size)")


__all__ = ["check_local_batch", "check_pure_bf16", "check_states_per_gpu"]
