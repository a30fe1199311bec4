"""labkit.deploy on the embedded MiniLM: the INT8 ONNX graph carries torchao's exact codes, predicts what the
torchao INT8 model predicts, and bad input is refused with a clear message."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from labkit.deploy.onnx_export import (  # noqa: E402
    DeployError,
    export_onnx,
    export_qat_int8,
    onnx_int8_weights,
    verify_int8_weights,
)
from labkit.deploy.onnx_runtime import OnnxClassifier, make_session, predict, session_options  # noqa: E402
from labkit.quant.qat import convert_qat, prepare_qat  # noqa: E402

ENCODER = r"^bert\.(encoder|pooler)\."


def fixed_batch(n: int = 16, t: int = 48, vocab: int = 30522, pad_from: int = 30) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[: n // 2, pad_from:] = 0  # right padding on half the rows, as a tokenizer pads
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.fixture(scope="module")
def models():
    from labkit.models import load_classifier

    fp32, _ = load_classifier("minilm-l6", num_labels=2, device="cpu")
    torch.manual_seed(0)
    fp32.classifier.weight.data.normal_(0, 0.5)  # a head that separates the batch, so labels are not all one class
    qat = prepare_qat(copy.deepcopy(fp32).train(), ENCODER, embeddings=True)
    convert_qat(qat.eval())
    return fp32.eval(), qat


@pytest.fixture(scope="module")
def int8_file(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("deploy") / "qat_int8.onnx"
    info = export_qat_int8(models[1], path)
    return path, info


def test_int8_graph_holds_torchao_codes_and_scales(models, int8_file):
    path, info = int8_file
    assert info["int8_linears"] == 37 and info["int8_embeddings"] == 3  # 6 layers x 6 + pooler; 3 tables
    check = verify_int8_weights(path, models[1])
    assert check["identical"] and check["linears"] == 37, check
    stored = onnx_int8_weights(path)
    codes, _ = stored.linears["bert.encoder.layer.0.attention.self.query"]
    assert codes.dtype == np.int8
    assert np.array_equal(codes, models[1].bert.encoder.layer[0].attention.self.query.weight.qdata.numpy())


def test_weight_check_catches_a_different_grid(models, int8_file):
    other = copy.deepcopy(models[1])
    w = other.bert.encoder.layer[2].output.dense.weight
    w.qdata[0, 0] = w.qdata[0, 0] ^ 1  # one code changed
    check = verify_int8_weights(int8_file[0], other)
    assert check["mismatched"] == ["bert.encoder.layer.2.output.dense"]


def test_deployed_int8_predicts_the_torchao_labels(models, int8_file):
    from labkit.cpu_claims import CLAIMS

    claim = CLAIMS["ort-int8-same-labels-as-torchao"]  # exact INT8 dot products: VNNI or AMX, not AVX2 alone
    if not claim.applies():
        pytest.skip(claim.why_not_checked())
    batch = fixed_batch()
    clf = OnnxClassifier(int8_file[0])
    ort_labels, torch_labels = predict(clf, batch), predict(models[1], batch)
    assert torch.equal(ort_labels, torch_labels)
    assert 0 < int(torch_labels.sum()) < len(torch_labels)  # both classes present: the check can fail
    with torch.inference_mode():
        int8 = models[1](**batch).logits
        quant_error = (models[0](**batch).logits - int8).abs().max()
        diff = (clf(**batch) - int8).abs().max()
    # same grid and per-token scheme; float summation order differs, and a network turns that into some
    # different rounding decisions, so the two INT8 runs differ by about as much as INT8 differs from FP32
    assert diff < 2 * quant_error, (diff, quant_error)


def test_fp32_export_matches_pytorch_and_int8_is_small(models, int8_file, tmp_path):
    path = export_onnx(models[0], tmp_path / "fp32.onnx")
    batch = fixed_batch(n=4)
    with torch.inference_mode():
        ref = models[0](**batch).logits
    assert (OnnxClassifier(path)(**batch) - ref).abs().max() < 1e-4
    assert int8_file[0].stat().st_size <= 0.3 * path.stat().st_size


def test_unprepared_or_unconverted_model_is_refused(models, tmp_path):
    with pytest.raises(DeployError, match="never prepared"):
        export_qat_int8(models[0], tmp_path / "x.onnx")
    prepared = prepare_qat(copy.deepcopy(models[0]), ENCODER)
    with pytest.raises(DeployError, match="not converted"):
        export_qat_int8(prepared, tmp_path / "x.onnx")
    with pytest.raises(DeployError, match="export_qat_int8"):
        export_onnx(models[1], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="fusions="):
        export_qat_int8(models[1], tmp_path / "x.onnx", fusions="most")


def test_missing_file_and_bad_options_are_refused(tmp_path, int8_file):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        make_session(tmp_path / "absent.onnx")
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        onnx_int8_weights(tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="threads"):
        session_options(threads=0)
    with pytest.raises(ValueError, match="optimization"):
        session_options(optimization="max")
    with pytest.raises(ValueError, match="token_type_ids"):
        OnnxClassifier(int8_file[0])(input_ids=torch.ones(1, 4, dtype=torch.long),
                                     attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_experiment_arguments_and_targets():
    import argparse
    import os

    from labkit.experiments import deploy_bert as exp
    from labkit.experiments.deploy_bert.bench import thread_counts

    assert thread_counts("1,2") == (1, 2) and thread_counts("1,all") == (1, os.cpu_count())
    with pytest.raises(argparse.ArgumentTypeError, match="'many' is not a thread count"):
        thread_counts("1,many")
    assert set(exp.cpu_flags()) >= {"avx512_vnni", "amx_int8"} or exp.cpu_flags() == {}
    row = {"p10_ms": 1.0, "p90_ms": 1.0, "threads": 1, "batch": 8}
    seed = {"n_eval": 872, "accuracy": {"torch-fp32": {"accuracy": 0.866}, "ort-qat-int8": {"accuracy": 0.865},
                                        "ort-peer-int8": {"accuracy": 0.861}, "torchao-int8": {"accuracy": 0.865}},
            "differ_from_torchao_eager": {"ort-qat-int8": 0}, "sizes_mb": {"torch-fp32": 90.9, "qat-int8": 23.1}}
    data = {"latency": [{**row, "variant": "torch-fp32", "p50_ms": 100.0, "p10_ms": 98.0, "p90_ms": 102.0},
                        {**row, "variant": "ort-peer-int8", "p50_ms": 43.0, "p10_ms": 42.0, "p90_ms": 44.0},
                        {**row, "variant": "ort-qat-int8", "p50_ms": 38.0, "p10_ms": 37.0, "p90_ms": 39.0}],
            "seed_results": {"0": seed}}
    checks = {c["target"]: c["verdict"] for c in exp.targets(data)}
    assert [t for t, v in checks.items() if v != "met"] == [t for t in checks if "accuracy" in t or "matches" in t]
    assert {checks[t] for t in checks if "accuracy" in t or "matches" in t} == {"no verdict"}  # one seed
    data["latency"][2].update(p10_ms=44.0, p50_ms=45.0, p90_ms=46.0)  # slower than the peer, above 0.40x
    assert not any(c["met"] is True for c in exp.targets(data) if "latency" in c["target"] or "peer (" in c["target"])


def test_one_int8_linear_in_the_graph_computes_torchaos_result(models, int8_file, tmp_path):
    """Fed the same input, a quantized Linear of the graph returns what torchao's INT8 Linear returns (per-token
    codes, integer matmul, both scales), to float rounding."""
    import onnx

    from labkit.cpu_claims import CLAIMS

    claim = CLAIMS["ort-int8-gemm-exact"]  # exact INT8 dot products: VNNI or AMX, not AVX2 alone
    if not claim.applies():
        pytest.skip(claim.why_not_checked())

    graph = onnx.load(str(int8_file[0]))
    module = "bert.encoder.layer.0.attention.self.query"
    node = next(n for n in graph.graph.node if n.op_type == "MatMulIntegerToFloat"
                and n.input[1] == f"{module}.weight_int8_t")
    x_name, y_name = node.input[0].removesuffix("/qtok/q"), node.output[0].removesuffix("/int")
    for name in (x_name, y_name):
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(graph, str(tmp_path / "probe.onnx"))
    clf = OnnxClassifier(tmp_path / "probe.onnx")
    _, x, y = clf.session.run(None, clf.feeds(fixed_batch(n=2)))
    linear = models[1].get_submodule(module)
    with torch.inference_mode():
        ref = linear(torch.from_numpy(x)) - linear.bias
    assert np.abs(y - ref.numpy()).max() <= 1e-5 * np.abs(ref.numpy()).max()


def test_each_tokens_largest_element_sits_on_a_rounding_tie():
    """Why two correct INT8 runtimes differ on a few labels (notebook 01b, the result file's notes): with torchao's
    per-token scale absmax / 127.5, each token's largest element lands on +-127.5, so a one-ulp change of the
    input (another summation order) changes that element's code far more often than any other code."""
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    def codes(x):
        eps = torch.finfo(torch.float32).eps
        scale, zp = choose_qparams_affine(x, MappingType.SYMMETRIC, (1, x.shape[1]), torch.int8, -128, 127, eps=eps,
                                          scale_dtype=torch.float32, zero_point_dtype=torch.int8, keepdim=True)
        return quantize_affine(x, (1, x.shape[1]), scale, zp, torch.int8, -128, 127), scale

    x = torch.randn(4000, 384, generator=torch.Generator().manual_seed(0)) * 3
    q, scale = codes(x)
    top = x.abs().amax(-1, keepdim=True)
    assert torch.allclose(top * (1.0 / scale), torch.full_like(top, 127.5), rtol=2 ** -22, atol=0)
    changed = q != codes(torch.nextafter(x, torch.full_like(x, float("inf"))))[0]
    at_top = changed & (x.abs() == top)
    assert changed.any(-1).float().mean() > 0.05  # a code changes in many tokens ...
    assert at_top.sum() >= 0.9 * changed.sum()  # ... and almost always at the largest element


def test_exact_graph_gives_the_unfused_logits_bit_for_bit(models, tmp_path):
    """fusions="exact" (per-token scale inside MatMulIntegerToFloat, Add + Gelu, MultiHeadAttention) is a faster
    form of fusions="none", not a new approximation: the logits are equal to the last bit, with and without padding,
    so accuracy measured on the unfused graph holds for it."""
    import onnx
    import onnxruntime as ort

    none = export_qat_int8(models[1], tmp_path / "none.onnx", fusions="none")
    exact = export_qat_int8(models[1], tmp_path / "exact.onnx", fusions="exact")
    assert exact["int8_linears"] == 37 and exact["fused"] == {"MultiHeadAttention": 6}
    assert verify_int8_weights(exact["path"], models[1])["identical"]
    ref, new = OnnxClassifier(none["path"]), OnnxClassifier(exact["path"])
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30522, (1, 37), generator=g)
    one = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    for batch in (fixed_batch(), fixed_batch(n=4, t=64, pad_from=64), one):  # padded, full, batch of one
        a, b = ref.run(ref.feeds(batch)), new.run(new.feeds(batch))
        assert np.array_equal(a, b), np.abs(a - b).max()
    so = session_options()  # what ORT makes of it: no Mul after the GEMMs, no BiasGelu, no separate attention ops
    so.optimized_model_filepath = str(tmp_path / "exact_opt.onnx")
    ort.InferenceSession(exact["path"], so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert ops.count("Gelu") == 6 and "BiasGelu" not in ops and "Softmax" not in ops and "Transpose" not in ops
    assert ops.count("Mul") < ops.count("MatMulIntegerToFloat")


def test_ort_profile_groups_every_kernel_of_the_exact_graph_and_the_peer(models, tmp_path):
    """ORT's profiler by op group: every kernel time lands in a group, the integer GEMMs are there in both graphs,
    the lab's graph shows its per-token quantization ops and the peer none (its quantization is inside the GEMM)."""
    from labkit.deploy.onnx_export import export_onnx, quantize_dynamic_peer
    from labkit.experiments.deploy_bert import profile_ort

    exact = export_qat_int8(models[1], tmp_path / "exact.onnx", fusions="exact")["path"]
    peer = quantize_dynamic_peer(export_onnx(models[0], tmp_path / "fp32.onnx"), tmp_path / "peer.onnx")
    prof = profile_ort({"ort-qat-int8-exact": exact, "ort-peer-int8": str(peer)}, 2, 32, 30522, runs=2)
    for name, p in prof.items():
        assert p["total_ms"] == pytest.approx(sum(r["ms"] for r in p["ops"].values())), name
        assert p["groups"]["integer GEMMs"] > 0, name
    assert prof["ort-qat-int8-exact"]["ops"]["MatMulIntegerToFloat"]["calls"] == 37
    assert prof["ort-qat-int8-exact"]["groups"]["activation quantization"] > 0
    peer_ops = prof["ort-peer-int8"]["ops"]
    assert "QuantizeLinear" not in peer_ops and "DynamicQuantizeMatMul" in peer_ops
