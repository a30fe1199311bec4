"""The exercise checks of notebooks 01 and 01b can fail: a placeholder is "not attempted", a wrong answer fails with
a hint, the right answer (the solutions notebooks' code) passes."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from labkit import quant
from labkit.checks import ClaimFailed
from labkit.exercises import NotAttempted, attempt
from labkit.exercises import qat as eq
from labkit.quant.fake import fake_quantize_tensor


def _tiny_bert(hidden: int = 32, vocab: int = 64):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


# -- 01 exercise 5: the STE ----------------------------------------------------------------------------------------

class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def ste_right(x, scale, qmin, qmax):
    return torch.clamp(_RoundSTE.apply(x / scale), qmin, qmax) * scale


def ste_no_clip_mask(x, scale, qmin, qmax):  # the gradient also flows where the value was clipped
    q = _RoundSTE.apply(x / scale)
    return (q + (torch.clamp(q, qmin, qmax) - q).detach()) * scale


def ste_plain_round(x, scale, qmin, qmax):  # round()'s own gradient: zero everywhere
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def ste_wrong_forward(x, scale, qmin, qmax):  # floor instead of round
    q = x / scale
    return torch.clamp(q + (torch.floor(q) - q).detach(), qmin, qmax) * scale


def test_ste_check():
    eq.check_ste_fake_quant(ste_right)
    for wrong in (ste_no_clip_mask, ste_plain_round, ste_wrong_forward, lambda x, s, a, b: x):
        with pytest.raises(ClaimFailed):
            eq.check_ste_fake_quant(wrong)
    with pytest.raises(NotAttempted):
        eq.check_ste_fake_quant(lambda *a: None)
    assert attempt(eq.check_ste_fake_quant, None) is False


# -- 01 exercises 1-3 ----------------------------------------------------------------------------------------------

def test_error_ratio_and_bits_checks():
    torch.manual_seed(0)
    W = torch.randn(64, 48) * torch.linspace(0.1, 2.0, 64)[:, None]
    err = lambda **kw: (W - fake_quantize_tensor(W, **kw)[0]).abs().mean()  # noqa: E731
    right = (err() / err(dim=0)).item()
    eq.check_error_ratio(right, W)
    for wrong in (1 / right, 1.0, right * 1.1):
        with pytest.raises(ClaimFailed):
            eq.check_error_ratio(wrong, W)
    with pytest.raises(NotAttempted):
        eq.check_error_ratio(None, W)

    measured = (err(bits=4, dim=0) / err(bits=8, dim=0)).item()
    eq.check_bits_ratio(16.0, measured, W)
    with pytest.raises(ClaimFailed):
        eq.check_bits_ratio(2.0, measured, W)  # 8 / 4 bits: not the ratio of grid steps
    with pytest.raises(ClaimFailed):
        eq.check_bits_ratio(16.0, 16.0, W)  # the prediction typed in as the measurement
    with pytest.raises(NotAttempted):
        eq.check_bits_ratio(16.0, None, W)


def test_size_prediction_check():
    model = _tiny_bert(hidden=256, vocab=2000)  # big enough that the file's header is below 5% of its size
    layers = quant.resolve_layers(model, r"^bert\.(encoder|pooler)\.")
    selected, prediction = set(layers), 0
    for name, p in model.named_parameters():
        owner, _, kind = name.rpartition(".")
        prediction += p.numel() + 4 * p.shape[0] if (owner in selected and kind == "weight") else 4 * p.numel()
    int8 = quant.quantize_dynamic_int8(copy.deepcopy(model), layers)
    eq.check_size_prediction(prediction / 1e6, int8, layers)
    fp32_mb = 4 * sum(p.numel() for p in model.parameters()) / 1e6
    with pytest.raises(ClaimFailed):
        eq.check_size_prediction(fp32_mb / 4, int8, layers)  # "a quarter of FP32": the embeddings stayed FP32
    with pytest.raises(ClaimFailed):
        eq.check_size_prediction(prediction / 1e6, quant.quantize_embeddings_int8(copy.deepcopy(int8)), layers)
    with pytest.raises(NotAttempted):
        eq.check_size_prediction(None, None, layers)


# -- 01 exercise 4: feed-forward QAT, trained ----------------------------------------------------------------------

def _ffn_qat(model, layers, train: bool):
    m = quant.prepare_qat(copy.deepcopy(model).train(), layers, activations="int8-dynamic")
    if train:  # one optimizer step stands for the training loop
        ids = torch.randint(0, 64, (4, 8))
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        torch.nn.functional.cross_entropy(m(input_ids=ids).logits, torch.tensor([0, 1, 0, 1])).backward()
        opt.step()
    return quant.convert_qat(m.eval())


def test_ffn_qat_check():
    model = _tiny_bert()
    ffn = quant.resolve_layers(model, r"encoder\.layer\.\d+\.(intermediate|output)\.dense$")
    eq.check_ffn_qat(ffn, _ffn_qat(model, ffn, train=True), model, 2)
    with pytest.raises(ClaimFailed, match="untrained"):
        eq.check_ffn_qat(ffn, _ffn_qat(model, ffn, train=False), model, 2)  # converted without training
    with_attention = quant.resolve_layers(model, r"encoder\.layer\.\d+\.(intermediate|.*output)\.dense$")
    with pytest.raises(ClaimFailed):
        eq.check_ffn_qat(with_attention, _ffn_qat(model, with_attention, train=True), model, 2)
    with pytest.raises(NotAttempted):
        eq.check_ffn_qat(None, None, model, 2)


# -- 01b exercises -------------------------------------------------------------------------------------------------

def test_per_token_codes_check():
    eq.check_per_token_codes(eq.per_token_codes_reference)

    def per_tensor(x):
        s = x.abs().amax() / 127.5
        return (torch.clamp(torch.round(x / s), -128, 127) + 128).to(torch.uint8)

    def no_offset(x):
        return (eq.per_token_codes_reference(x).int() - 128).to(torch.int8)

    def scale_127(x):
        s = x.abs().amax(-1, keepdim=True) / 127
        return (torch.clamp(torch.round(x / s), -128, 127) + 128).to(torch.uint8)

    for wrong in (per_tensor, no_offset, scale_127, lambda x: torch.zeros_like(x, dtype=torch.uint8)):
        with pytest.raises(ClaimFailed):
            eq.check_per_token_codes(wrong)
    with pytest.raises(NotAttempted):
        eq.check_per_token_codes(lambda x: None)


def _graph(tmp_path, ops):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node(op, ["x"], [f"y{i}"], domain="com.microsoft" if "Integer" in op else "")
             for i, op in enumerate(ops)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1]) for i in range(len(ops))])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_op_counts_check(tmp_path):
    import onnx

    path = _graph(tmp_path, ["MatMulIntegerToFloat", "Add", "MatMulIntegerToFloat", "Gelu"])

    def right(p):
        return Counter(n.op_type for n in onnx.load(p).graph.node)

    eq.check_op_counts(right, path, 2)
    with pytest.raises(ClaimFailed):
        eq.check_op_counts(lambda p: {"MatMulIntegerToFloat": 2}, path, 2)  # not every operator
    with pytest.raises(ClaimFailed):
        eq.check_op_counts(lambda p: dict.fromkeys(right(p), 1), path, 2)  # op types without counts
    with pytest.raises(ClaimFailed):
        eq.check_op_counts(right, path, 3)  # a Linear without its integer GEMM
    with pytest.raises(NotAttempted):
        eq.check_op_counts(None, path, 2)


def test_fastest_batch1_check():
    ref = {"latency": [{"threads": 1, "batch": 1, "variant": "torch-fp32", "p50_ms": 10.0},
                       {"threads": 1, "batch": 1, "variant": "ort-qat-int8", "p50_ms": 4.0},
                       {"threads": 1, "batch": 8, "variant": "ort-peer-int8", "p50_ms": 1.0},
                       {"threads": 2, "batch": 1, "variant": "ort-peer-int8", "p50_ms": 2.0}]}
    eq.check_fastest_batch1(("ort-qat-int8", 0.4), ref)
    for wrong in (("ort-peer-int8", 0.1), ("ort-qat-int8", 2.5), ("ort-qat-int8", 4.0)):
        with pytest.raises(ClaimFailed):
            eq.check_fastest_batch1(wrong, ref)
    with pytest.raises(NotAttempted):
        eq.check_fastest_batch1(None, ref)
