"""Analytic memory of training a Llama-style model, per GPU, with FSDP2 sharding over N GPUs.

The inference model (labkit.attention.memory_model) counts weights + one layer's activations. Training adds:
    master weights   the parameters FSDP2 keeps sharded, in their storage dtype (fp32 under bf16 mixed
                     precision: the fp32 "master" copy that AdamW updates), P * 4 / N
    gradients        sharded, same dtype as the parameters, trainable parameters only
    optimizer        AdamW's two moments (exp_avg, exp_avg_sq), fp32, trainable parameters only
    optimizer temp   PyTorch's foreach AdamW (the default on GPUs) computes sqrt(exp_avg_sq) for every tensor at
                     once: one fp32 temporary the size of the trainable shard, alive only inside `step()`
    working weights  FSDP2 all-gathers one decoder layer at a time in the compute dtype (bf16) and prefetches
                     the next: two layers unsharded, plus the root group (embeddings, final norm, head)
    grad buffers     one layer's unsharded gradient in bf16 and its fp32 copy for the reduce-scatter
    activations      with checkpointing: every layer keeps only its input (T x h) and one layer is recomputed
                     at a time; without: every layer keeps everything its backward needs
    loss             the logits in bf16, their fp32 upcast and the fp32 log-softmax the cross-entropy saves
The step has two peaks and the larger one wins:
    backward         states + working weights + grad buffers + activations + max(one layer's recompute, loss)
    optimizer step   states + optimizer temp (activations are gone by then)
With a 7B model on 2 GPUs the optimizer step is the peak up to ~16k tokens, the backward beyond. Adding every
part at once would overstate the peak: the activations are freed before the optimizer step, and the foreach
temporary lives only inside it (the 2 x H200 measurements follow the two phases). Activation fake quantization (QAT w8a8)
saves the quantized input of each fake-quantized Linear as well. Like the inference model it ignores allocator
rounding and small buffers: it should track `torch.cuda.max_memory_allocated`, not match it to the byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.attention.memory_model import GIB, ModelShape, dtype_bytes

__all__ = ["GIB", "ModelShape", "TrainSetup", "training_breakdown", "phase_peaks", "predicted_training_peak",
           "max_train_seq_len", "states_bytes_per_param"]


@dataclass(frozen=True)
class TrainSetup:
    """How the model is trained: shards, batch per GPU, dtypes, checkpointing, QAT."""

    world_size: int = 1
    batch_per_gpu: int = 1
    compute_bytes: int = 2            # bf16 autocast / FSDP2 param_dtype
    master_bytes: int = 4             # fp32 master weights (FSDP2 keeps the sharded params in fp32)
    optimizer_states: int = 2         # AdamW: exp_avg, exp_avg_sq
    checkpointing: bool = True
    frozen_embeddings: bool = True    # the input embedding gets no gradient and no optimizer state
    qat_ff_activations: bool = False  # w8a8 QAT on the feed-forward layers (fake-quantized inputs are saved)
    foreach_optimizer: bool = True    # PyTorch's default AdamW on GPUs (one shard-sized fp32 temporary in step)


def _layer_params(shape: ModelShape) -> int:
    h, d = shape.hidden, shape.head_dim
    return h * shape.heads * d * 2 + 2 * h * shape.kv_heads * d + 3 * h * shape.intermediate + 2 * h


def layer_activation_bytes(shape: ModelShape, tokens: int, setup: TrainSetup) -> int:
    """Bytes one decoder layer saves for its backward (flash attention, bf16 compute, fp32 RMSNorm)."""
    b, T = setup.compute_bytes, tokens
    h, d, H, KV, I = shape.hidden, shape.head_dim, shape.heads, shape.kv_heads, shape.intermediate
    norm = T * h * (4 + b)                                    # fp32 input copy + normalised output, per norm
    attention = T * d * b * (H + 2 * KV      # q, k, v projections
                             + H + KV        # rotated q, k (what the kernel saves)
                             + 2 * H)        # attention output and its transposed copy (o_proj input)
    attention += T * H * 4                                    # flash's log-sum-exp, fp32
    mlp = T * I * b * 4                                       # gate, act(gate), up, act(gate) * up
    qat = T * (2 * h + I) * b if setup.qat_ff_activations else 0   # fake-quantized gate/up and down inputs
    return 2 * norm + attention + mlp + qat + T * h * b        # + the layer input


def training_breakdown(shape: ModelShape, seq_len: int, setup: TrainSetup = TrainSetup()) -> dict[str, int]:
    """Bytes per GPU of each part of a training step (see the module docstring); `phase_peaks` adds them up."""
    n = setup.world_size
    total = shape.parameters()
    embed = shape.vocab * shape.hidden
    trainable = total - embed if setup.frozen_embeddings else total  # a tied head is frozen with the embedding
    T = setup.batch_per_gpu * seq_len
    c = setup.compute_bytes
    layer = _layer_params(shape)
    root = total - shape.layers * layer
    per_layer_act = layer_activation_bytes(shape, T, setup)
    if setup.checkpointing:
        activations = shape.layers * T * shape.hidden * c + per_layer_act
    else:
        activations = shape.layers * per_layer_act
    return {
        "master_weights": total * setup.master_bytes // n,
        "gradients": trainable * setup.master_bytes // n,
        "optimizer": trainable * 4 * setup.optimizer_states // n,
        "optimizer_temp": trainable * 4 // n if setup.foreach_optimizer else 0,
        "working_weights": (2 * layer + root) * c,
        "grad_buffers": layer * (c + 4) if n > 1 else layer * c,
        "activations": activations,
        "loss": T * shape.vocab * (c + 4 + 4),
        "recompute": per_layer_act if setup.checkpointing else 0,
    }


def phase_peaks(shape: ModelShape, seq_len: int, setup: TrainSetup = TrainSetup()) -> dict[str, int]:
    """Modelled bytes per GPU at the two peaks of a step: the backward and the optimizer step."""
    p = training_breakdown(shape, seq_len, setup)
    states = p["master_weights"] + p["gradients"] + p["optimizer"]
    # with checkpointing the loss and the recomputed layer are not alive together; the larger one counts
    transient = max(p["loss"], p["recompute"]) - p["recompute"] if setup.checkpointing else p["loss"]
    backward = states + p["working_weights"] + p["grad_buffers"] + p["activations"] + transient
    return {"backward": backward, "optimizer_step": states + p["optimizer_temp"]}


def predicted_training_peak(shape: ModelShape, seq_len: int, setup: TrainSetup = TrainSetup()) -> int:
    """Modelled peak bytes per GPU of one training step (the larger of the two phases)."""
    return max(phase_peaks(shape, seq_len, setup).values())


def max_train_seq_len(shape: ModelShape, budget_bytes: float, setup: TrainSetup = TrainSetup()) -> int:
    """Longest sequence whose modelled training peak fits in `budget_bytes` (0 if none fits)."""
    lo, hi = 0, 1 << 22
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicted_training_peak(shape, mid, setup) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def states_bytes_per_param(setup: TrainSetup = TrainSetup()) -> float:
    """Bytes per trainable parameter of weights + gradients + optimizer on ONE GPU (16 for fp32-master AdamW)."""
    return setup.master_bytes * 2 + 4 * setup.optimizer_states
