"""QAT of a causal LM sharded over GPUs with PyTorch's FSDP2: the lab's QAT calls, at 7B scale.

The recipe is the one the single-GPU hybrid uses (labkit.quant.qat + the fine-tune loop): select layers,
`prepare_qat` (fake quantizers), fine-tune (AdamW, warm-up then cosine, grad-norm clip 1.0, embeddings frozen),
`convert_qat` (real INT8). What changes is where the tensors live:

    prepare_qat BEFORE sharding   the fake quantizers are plain sub-modules of each Linear; FSDP2 then shards
                                  every parameter (a DTensor) and all-gathers a whole layer before its forward,
                                  so the quantizers see ordinary full weights, exactly as on one GPU
    fully_shard                   each decoder layer, then the root (embeddings, final norm, head)
    MixedPrecisionPolicy          parameters stored (and updated by AdamW) in fp32, all-gathered and computed in
                                  bf16, gradients reduced in fp32 (on a CPU: fp32 throughout)
    activation checkpointing      transformers' own (each decoder layer recomputed in the backward)
    attention                     FlashAttention-2 (SDPA forced to flash, labkit.attention) on a GPU; SDPA on a CPU
    compile (optional)            each decoder layer's forward through torch.compile, inside FSDP2's hooks and the
                                  checkpointing: eager fake quantization is a chain of memory-bound elementwise
                                  kernels per Linear; compiled, it fuses into the neighbouring kernels

Data parallelism: every rank takes its slice of each global batch, so N processes see exactly the batches one
process sees, and the averaged gradient is the same: loss curves match up to floating-point reduction order.
Run it with `torchrun` (any N, 1 included) or call `train` in a process that joined a process group.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn

from labkit.quant.selection import FEED_FORWARD

META_INIT_PARAMS = 1_000_000_000
"""Random-weight shapes above this size are created on the meta device and initialised shard by shard."""


@dataclass
class TrainConfig:
    """One FSDP2 training run. `model` is an embedded name, a hub id / folder, or a labkit shape."""

    model: str = "smollm2-135m"
    random_weights: bool = False       # build the shape of `model` with random weights (speed and memory only)
    num_layers: int | None = None      # fewer decoder layers (random-weight shapes only; tests)
    qat: bool = True                   # fake-quantize `layers`; False: plain fine-tuning
    layers: str = FEED_FORWARD
    activations: str | None = "int8-dynamic"   # labkit.quant.qat modes: int8-dynamic, int8-dynamic-asym, None
    seq_len: int = 1024
    global_batch: int = 8              # sequences per optimizer step, over all ranks
    steps: int = 50
    lr: float = 2e-5
    warmup_frac: float = 0.1
    seed: int = 0
    checkpointing: bool = True         # activation checkpointing
    freeze_embeddings: bool = True
    attention: str | None = None       # labkit backend name; None: fa2 on a GPU, sdpa on a CPU
    compute_dtype: str | None = None   # None: bfloat16 on a GPU, float32 on a CPU
    compile_fake_quant: bool = False   # torch.compile each fake quantizer (fuses its elementwise passes)
    compile_layers: bool = False       # torch.compile each decoder layer's forward (fuses across the whole layer)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: float = 600.0) -> Dist:
    """Join the torchrun job (NCCL on GPUs, gloo on CPUs); a plain `python` process becomes a job of one."""
    cuda = torch.cuda.is_available() and os.environ.get("LABKIT_FSDP_DEVICE", "") != "cpu"
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if cuda else None)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


def check_config(cfg: TrainConfig, world_size: int) -> None:
    """Refuse a run that cannot work, before any model is loaded."""
    from labkit.quant.qat import ACTIVATION_MODES

    if cfg.global_batch < 1 or cfg.global_batch % world_size:
        raise ValueError(f"global_batch={cfg.global_batch} must be a positive multiple of the number of "
                         f"processes ({world_size}): each rank takes global_batch / {world_size} sequences")
    for name in ("seq_len", "steps"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
    if not cfg.lr > 0:
        raise ValueError(f"lr={cfg.lr} must be > 0")
    if cfg.activations not in ACTIVATION_MODES:
        raise ValueError(f"activations={cfg.activations!r}: use one of {ACTIVATION_MODES}")


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    return getattr(torch, cfg.compute_dtype) if cfg.compute_dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)


def attention_name(cfg: TrainConfig, device: torch.device) -> str:
    return cfg.attention or ("fa2" if device.type == "cuda" else "sdpa")


def _hf_attention(cfg: TrainConfig, device: torch.device) -> str:
    """transformers' attn_implementation for the labkit backend (checked for this device and bf16/fp32 compute)."""
    from labkit.attention.backends import check_backend, register_backends

    backend = check_backend(attention_name(cfg, device), device, compute_dtype(cfg, device))
    register_backends()
    return backend.hf_name


def model_config(cfg: TrainConfig):
    """The transformers config of a random-weight shape (None for trained models)."""
    from labkit.models import EMBEDDED_CAUSAL_LMS, SHAPES, _canonical, shape_config

    key = _canonical(cfg.model)
    if cfg.random_weights or (key in SHAPES and key not in EMBEDDED_CAUSAL_LMS):
        return shape_config(key, cfg.num_layers)
    return None


def build_model(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The float model in fp32 (trained weights, or random weights of a shape), QAT-prepared if asked.

    Small models are built whole on the CPU from `seed` (identical on every rank, whatever the world size);
    random shapes above META_INIT_PARAMS are built on the meta device and initialised after sharding."""
    from transformers import AutoModelForCausalLM

    from labkit.attention.memory_model import ModelShape
    from labkit.models import load_causal_lm
    from labkit.quant.qat import prepare_qat

    attn = _hf_attention(cfg, device)
    config = model_config(cfg)
    if config is None:
        model, _ = load_causal_lm(cfg.model, dtype=torch.float32, device="cpu", attn_implementation="sdpa")
        model.set_attn_implementation(attn)
    else:
        meta = ModelShape.from_config(config).parameters() > META_INIT_PARAMS
        torch.manual_seed(cfg.seed)
        with torch.device("meta" if meta else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    if cfg.qat:
        prepare_qat(model, cfg.layers, activations=cfg.activations)
        if cfg.compile_fake_quant:
            compile_fake_quantizers(model)
    if cfg.freeze_embeddings:
        for mod in model.modules():
            if isinstance(mod, nn.Embedding):
                mod.weight.requires_grad_(False)
    if cfg.checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.compile_layers:
        compile_decoder_layers(model)
    model.config.use_cache = False
    return model.train()


def compile_decoder_layers(model: nn.Module) -> int:
    """`torch.compile` the `forward` of every decoder layer, in place; returns how many.

    Only `forward` is compiled, so what wraps it stays eager and composes unchanged: FSDP2's all-gather and
    reshard hooks run around it, and activation checkpointing (transformers calls the layer through
    `torch.utils.checkpoint`) recomputes the compiled forward in the backward. Inside, the fake quantizers, the
    norms, the SwiGLU and the rotary embedding fuse with the matmuls' neighbours into a few kernels. All layers
    share one compiled graph (same code, same shapes), so compile time does not grow with depth."""
    layers = model.model.layers
    for layer in layers:
        layer.forward = torch.compile(layer.forward)
    return len(layers)


def compile_fake_quantizers(model: nn.Module) -> int:
    """`torch.compile` every fake quantizer in place (same module, same numerics: one fused kernel instead of a
    chain of elementwise passes over each weight and activation). Returns how many were compiled."""
    count = 0
    for mod in model.modules():
        for attr in ("weight_fake_quantizer", "activation_fake_quantizer"):
            fq = getattr(mod, attr, None)
            if isinstance(fq, nn.Module):
                fq.compile()
                count += 1
    return count


def shard_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """FSDP2: `fully_shard` every decoder layer, then the root; bf16 compute with fp32 master weights on GPUs."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = compute_dtype(cfg, device)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 \
        else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    if any(p.is_meta for p in model.parameters()):
        _materialize_random(model, cfg, device)
    return model


@torch.no_grad()
def _materialize_random(model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """Allocate a meta-built model's shards on `device` and fill them like transformers' Llama init
    (normal(0, initializer_range), norms at 1), each rank its own shard; rebuild the rotary buffers."""
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * dist.get_rank())
    std = getattr(model.config, "initializer_range", 0.02)
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if "norm" in name:
            local.fill_(1.0)
        else:
            local.normal_(0.0, std, generator=gen)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(model.config).to(device)


def lr_factor(step: int, steps: int, warmup_frac: float) -> float:
    """labkit's fine-tune schedule: linear warm-up over warmup_frac of the steps, then cosine decay to 0."""
    warmup = max(1, int(steps * warmup_frac))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_frac))
    return opt, sched


def batch_order(n_blocks: int, cfg: TrainConfig) -> torch.Tensor:
    """The global order of blocks (as labkit's fine-tune draws it): depends on the seed only."""
    gen = torch.Generator().manual_seed(cfg.seed)
    need = cfg.steps * cfg.global_batch
    return torch.cat([torch.randperm(n_blocks, generator=gen) for _ in range(math.ceil(need / n_blocks))])


def local_batch(blocks: torch.Tensor, order: torch.Tensor, step: int, cfg: TrainConfig, rank: int,
                world_size: int) -> torch.Tensor:
    """This rank's slice of global batch `step`."""
    per_rank = cfg.global_batch // world_size
    start = step * cfg.global_batch + rank * per_rank
    return blocks[order[start:start + per_rank]]


@dataclass
class StepRecord:
    """One optimizer step as every rank agrees on it (loss averaged over ranks, worst rank's memory)."""

    step: int
    loss: float
    lr: float
    step_s: float
    tokens_per_s: float
    peak_gib: float | None
    grad_norm: float

    def as_dict(self) -> dict:
        return asdict(self)


def _max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def train(
    model: nn.Module,
    blocks: torch.Tensor,
    cfg: TrainConfig,
    env: Dist,
    *,
    start_step: int = 0,
    stop_step: int | None = None,
    optimizer=None,
    on_step: Callable[[StepRecord], None] | None = None,
) -> list[StepRecord]:
    """Fine-tune the sharded `model` on `blocks` ([n, seq_len] token ids) from `start_step` to `stop_step`."""
    if optimizer is None:
        optimizer = make_optimizer(model, cfg)
    opt, sched = optimizer
    order = batch_order(len(blocks), cfg)
    stop = cfg.steps if stop_step is None else min(stop_step, cfg.steps)
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = env.device.type == "cuda"
    records: list[StepRecord] = []
    model.train()
    for step in range(start_step, stop):
        ids = local_batch(blocks, order, step, cfg, env.rank, env.world_size).to(env.device)
        if cuda:
            torch.cuda.synchronize(env.device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        mean_loss = loss.detach().float().reshape(1)
        dist.all_reduce(mean_loss)
        if cuda:
            torch.cuda.synchronize(env.device)
        step_s = _max_over_ranks(time.perf_counter() - t0, env.device)
        peak = _max_over_ranks(torch.cuda.max_memory_allocated(env.device) / 2**30, env.device) if cuda else None
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        rec = StepRecord(step=step, loss=float(mean_loss.item()) / env.world_size, lr=lr, step_s=step_s,
                         tokens_per_s=cfg.global_batch * blocks.shape[1] / step_s, peak_gib=peak,
                         grad_norm=float(norm))
        records.append(rec)
        if on_step is not None:
            on_step(rec)
    return records


def random_blocks(vocab: int, cfg: TrainConfig, n_blocks: int | None = None) -> torch.Tensor:
    """Random token ids (the same on every rank): for speed and memory runs of random-weight shapes."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = n_blocks or max(cfg.global_batch, 1) * min(cfg.steps, 64)
    return torch.randint(0, vocab, (n, cfg.seq_len), generator=gen)
