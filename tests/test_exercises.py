"""Every exercise check can fail: a placeholder answer is "not attempted", a wrong answer fails with a hint, and the
right answer (the solutions notebooks' code) passes."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.attention import tiling
from labkit.checks import ClaimFailed
from labkit.exercises import NotAttempted, attempt
from labkit.exercises import attention as ea
from labkit.exercises import int8 as ei
from labkit.exercises import training as et
from labkit.quant import int8_kernel as ik
from labkit.train.memory_model import ModelShape


def _not_implemented(*args, **kwargs):
    raise NotImplementedError


def _returns_none(*args, **kwargs):
    return None


PLACEHOLDERS = [None, NotImplemented, _not_implemented, _returns_none]


# -- right and wrong answers, one pair per exercise ----------------------------------------------------------------

def online_softmax(x, block, rescale=True):
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for s in range(0, x.shape[-1], block):
        xb = x[..., s:s + block]
        m_new = torch.maximum(m, xb.amax(-1))
        l = (l * torch.exp(m - m_new) if rescale else l) + torch.exp(xb - m_new[..., None]).sum(-1)
        m = m_new
    return torch.exp(x - m[..., None]) / l[..., None]


def causal_tiled_forward(q, k, v, block_q, block_k, skip_above=True, mask=True):
    n, d = q.shape[-2:]
    out, lse, tiles = torch.empty_like(q), torch.empty(q.shape[:-1], dtype=q.dtype), 0
    for qs in range(0, n, block_q):
        qb = q[..., qs:qs + block_q, :]
        rows = torch.arange(qs, qs + qb.shape[-2])
        m = torch.full(qb.shape[:-1], float("-inf"), dtype=q.dtype)
        l, acc = torch.zeros(qb.shape[:-1], dtype=q.dtype), torch.zeros_like(qb)
        for ks in range(0, min(qs + block_q, n) if skip_above else n, block_k):
            s = qb @ k[..., ks:ks + block_k, :].transpose(-2, -1) / math.sqrt(d)
            if mask:
                cols = torch.arange(ks, ks + s.shape[-1])
                s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            p, c = torch.exp(s - m_new[..., None]), torch.exp(m - m_new)
            l, acc, m = l * c + p.sum(-1), acc * c[..., None] + p @ v[..., ks:ks + block_k, :], m_new
            tiles += 1
        out[..., qs:qs + block_q, :], lse[..., qs:qs + block_q] = acc / l[..., None], m + torch.log(l)
    return out, lse, tiles


def fold_block(m, l, acc, s, vb, rescale_acc=True):
    m_new = torch.maximum(m, s.amax(-1))
    p, c = torch.exp2(s - m_new[:, None]), torch.exp2(m - m_new)
    return m_new, l * c + p.sum(-1), (acc * c[:, None] if rescale_acc else acc) + p @ vb


def causal_tiles(n, bq, bk):
    unmasked = masked = 0
    for qs in range(0, n, bq):
        unmasked += qs // bk
        masked += math.ceil((min(qs + bq, n) - qs) / bk)
    return unmasked, masked


def attention_floor(n, hd, heads=32, causal=True, matmul_tflops=989.0, hbm_tb_s=3.35):
    return ea.attention_floor_reference(n, hd, heads, causal, matmul_tflops, hbm_tb_s)


def row_logsumexp(s, stable=True):
    m = s.amax(-1, keepdim=True) if stable else torch.zeros_like(s[:, :1])
    return (m + torch.log(torch.exp(s - m).sum(-1, keepdim=True))).squeeze(-1)


def my_quantize(w, reciprocal=True):
    scale = (w.abs().amax(dim=1) / 127.5).clamp(min=torch.finfo(torch.float32).eps).to(torch.float32)
    q = w * (1.0 / scale[:, None]) if reciprocal else w / scale[:, None]
    return torch.clamp(torch.round(q), -128, 127).to(torch.int8), scale


def floor_us(m, n, k, tb_s, with_scales=True):
    return (n * k + (4 * n if with_scales else 0) + 2 * m * k + 2 * m * n) / (tb_s * 1e12) * 1e6


def launch_programs(cfg, m, n):
    return -(-n // cfg.block_n) * cfg.split_k * -(-m // cfg.block_m)


def states_bytes_per_gpu(params, trainable, world_size):
    return (4 * params + 12 * trainable) / world_size


def my_blocks(order, step, rank, world_size, global_batch):
    per = global_batch // world_size
    start = step * global_batch + rank * per
    return [int(i) for i in order[start:start + per]]


_SHAPE = ModelShape.named("llama-2-7b")
_P, _EMB = _SHAPE.parameters(), _SHAPE.vocab * _SHAPE.hidden

EXERCISES = {
    # name: (check, right answer(s), wrong answer(s), which placeholder position)
    "online softmax": (ea.check_online_softmax, (online_softmax,),
                       (lambda x, b: online_softmax(x, b, rescale=False),)),
    "causal tiled forward": (ea.check_causal_tiled_forward, (causal_tiled_forward,),
                             (lambda *a: causal_tiled_forward(*a, skip_above=False),)),
    "causal tiled forward, no mask": (ea.check_causal_tiled_forward, (causal_tiled_forward,),
                                      (lambda *a: causal_tiled_forward(*a, mask=False),)),
    "eager score bytes": (ea.check_eager_score_bytes, (lambda n, h: h * n * n * 10 + n * n * 2,),
                          (lambda n, h: h * n * n * 10,)),
    "hbm traffic": (ea.check_hbm_traffic,
                    (lambda n, d, b: (4 * n * n + 4 * n * d, n * d + (n // b) * 2 * n * d + n * d + n),),
                    (lambda n, d, b: (4 * n * n + 4 * n * d, 2 * n * d + 2 * n * d + n),)),  # K, V read once only
    "fold block": (ea.check_fold_block, (fold_block,), (lambda *a: fold_block(*a, rescale_acc=False),)),
    "causal tiles": (ea.check_causal_tiles, (causal_tiles,),
                     (lambda n, bq, bk: (sum(range(0, n, bq)) // bk, n // bq),)),
    "attention floor": (ea.check_attention_floor, (attention_floor,),
                        (lambda n, hd, heads=32, causal=True: attention_floor(n, hd, heads, False),)),
    "row logsumexp": (ea.check_row_logsumexp, (row_logsumexp,), (lambda s: row_logsumexp(s, stable=False),)),
    "per-channel quantizer": (ei.check_per_channel_quantizer, (my_quantize,),
                              (lambda w: my_quantize(w, reciprocal=False),)),
    "floor us": (ei.check_floor_us, (floor_us,), (lambda *a: floor_us(*a, with_scales=False),)),
    "launch grid": (ei.check_launch_grid, (launch_programs, ik.KernelConfig(1, 16, 128, 17)),
                    (lambda cfg, m, n: (n // cfg.block_n) * cfg.split_k * max(1, m // cfg.block_m),
                     ik.KernelConfig(1, 16, 128, 17))),
    "launch grid, narrow config too small": (ei.check_launch_grid, (launch_programs, ik.KernelConfig(1, 16, 128, 17)),
                                             (launch_programs, ik.KernelConfig(16, 32, 256, 1))),
    "states per gpu": (et.check_states_per_gpu, (states_bytes_per_gpu, 5),
                       (lambda p, t, n: 16 * p / n, 5)),
    "states per gpu, gpu count": (et.check_states_per_gpu, (states_bytes_per_gpu, 5), (states_bytes_per_gpu, 4)),
    "pure bf16": (et.check_pure_bf16, (8, (16 - 8) * (_P - _EMB) / 1e9 + 2 * _EMB / 1e9), (8, 8 * _P / 1e9)),
    "local batch": (et.check_local_batch, (my_blocks,),
                    (lambda order, step, rank, ws, gb: my_blocks(order, step, ws - 1 - rank, ws, gb),)),
}


@pytest.mark.parametrize("name", EXERCISES)
def test_the_right_answer_passes(name):
    check, right, _ = EXERCISES[name]
    check(*right)


@pytest.mark.parametrize("name", EXERCISES)
def test_a_wrong_answer_fails_with_a_hint(name):
    check, _, wrong = EXERCISES[name]
    with pytest.raises(ClaimFailed, match="FAIL") as err:
        check(*wrong)
    assert not isinstance(err.value, NotAttempted)
    assert "hint:" in str(err.value)


@pytest.mark.parametrize("placeholder", PLACEHOLDERS, ids=["None", "NotImplemented", "raises", "returns None"])
@pytest.mark.parametrize("name", [n for n in EXERCISES if "," not in n])
def test_an_empty_answer_is_not_attempted(name, placeholder):
    check, right, _ = EXERCISES[name]
    for i in range(len(right)):
        if not callable(right[i]) and callable(placeholder):
            continue  # a value's placeholder is None or NotImplemented
        answers = list(right)
        answers[i] = placeholder
        with pytest.raises(NotAttempted, match="not attempted|returned None"):
            check(*answers)


def test_attempt_reports_an_empty_answer_and_stops_on_a_wrong_one(capsys):
    assert attempt(ea.check_causal_tiles, None) is False
    assert "TODO  causal_tiles is not attempted yet" in capsys.readouterr().out
    assert attempt(ea.check_causal_tiles, causal_tiles) is True
    with pytest.raises(ClaimFailed, match="hint:"):
        attempt(ea.check_causal_tiles, lambda n, bq, bk: (0, 0))


def test_committed_parts_of_the_checks_read_the_files(capsys):
    from labkit.results import load_reference

    committed = load_reference("triton_fa2", "h100")[0]
    rows = ea.check_attention_floor(attention_floor, committed)
    assert rows and all(0 < r["fraction_of_floor"] <= 1 for r in rows)
    ei.check_floor_us(floor_us, load_reference("fast8bit", "h100")[0])
    out = capsys.readouterr().out
    assert "[committed: triton_fa2_h100.json]" in out and "[committed: fast8bit_h100.json]" in out
    with pytest.raises(ClaimFailed, match="committed: fast8bit_h100.json"):  # a floor 10x too high beats the file
        ei.check_floor_us(lambda m, n, k, tb: floor_us(m, n, k, tb) * (1 if tb in (3.0, 2.5, 1.0) else 10),
                          load_reference("fast8bit", "h100")[0])


def test_tile_kinds_match_the_kernel_loops_and_the_visible_scores():
    for n, bq, bk in ea.CAUSAL_CASES + [(10, 4, 2), (33, 8, 8)]:
        unmasked = sum(len(range(0, qs, bk)) for qs in range(0, n, bq))
        masked = sum(len(range(qs, min(qs + bq, n), bk)) for qs in range(0, n, bq))
        assert tiling.causal_tile_counts(n, bq, bk) == (unmasked, masked)
        visible = torch.ones(n, n, dtype=torch.bool).tril()
        assert sum(tiling.causal_tile_counts(n, bq, bk)) == sum(
            bool(visible[qs:qs + bq, ks:ks + bk].any()) for qs in range(0, n, bq) for ks in range(0, n, bk))


def test_without_triton_the_launch_grid_check_checks_the_grid_and_skips_the_kernel(monkeypatch, capsys):
    monkeypatch.setattr(ik, "triton", None)  # as on macOS or Windows, where Triton is not installed
    ei.check_launch_grid(launch_programs, ik.KernelConfig(1, 16, 128, 17))
    out = capsys.readouterr().out
    assert "SKIP  the kernel with your config" in out and "triton package is not installed" in out
    with pytest.raises(ClaimFailed, match="hint:"):  # the grid formula is still checked
        ei.check_launch_grid(lambda cfg, m, n: n // cfg.block_n, ik.KernelConfig(1, 16, 128, 17))
