"""Export a static INT8 model (`labkit.quant.static`, PTQ or QAT) as a QDQ ONNX graph carrying its own scales.

Every static activation quantizer becomes one QuantizeLinear -> DequantizeLinear pair with the model's scale and
zero point (uint8 or int8); every quantized Linear's weight becomes an INT8 initializer (the codes torchao's weight
fake quantizer rounded to) with its per-output-channel scales, read through a DequantizeLinear (axis = the output
channel). Runtimes fuse these patterns into integer kernels: ONNX Runtime into QLinearMatMul /
MatMulIntegerToFloat / QLinear* ops (`fused_ops` shows what it did), OpenVINO into FakeQuantize + INT8 kernels.

Checked at build time (`export_static_qdq`): the stored INT8 weights and scales equal the PyTorch model's bit for
bit (codes x scale == the fake-quantized weight the model computes with), and every activation scale/zero point
equals the quantizer's. `check_artifact(path, model)` repeats that check for a file and a model and raises
`ScaleMismatchError` naming the first layer that differs: a runtime session is only opened on a file that
belongs to its model (`load_static_artifact`).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labkit.deploy.onnx_export import INPUT_NAMES, DeployError

META_KEY = "labkit_static_qdq"
RUNTIMES = ("ort", "openvino")


class ScaleMismatchError(DeployError):
    """An artifact's INT8 weights or scales are not its model's."""


# ----------------------------------------------------------------------------------- the model's numbers


def weight_codes(linear: nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 codes [out, in], scale [out] or [out, groups], fake-quantized weight) of a StaticQuantLinear,
    checked to dequantize to exactly the weight the model computes with."""
    fq = linear.weight_fake_quantizer
    w = linear.weight.detach().float()
    with torch.no_grad():
        ref = fq(w)
    scale, zp = fq.scale.detach().float(), fq.zero_point.detach().float()
    if zp.numel() and bool((zp != 0).any()):
        raise DeployError("only symmetric weights (zero point 0) are exported")
    from torchao.quantization.quant_primitives import _DTYPE_TO_QVALUE_BOUNDS, _do_fake_quantize_affine

    qmin, qmax = _DTYPE_TO_QVALUE_BOUNDS[fq.config.dtype]
    group = w.shape[1] // scale.reshape(w.shape[0], -1).shape[1]
    codes, deq = _do_fake_quantize_affine(w, (1, group), scale.reshape(w.shape[0], -1), zp.reshape(w.shape[0], -1),
                                          torch.int32, qmin, qmax)
    s_full = scale.reshape(w.shape[0], -1).repeat_interleave(group, dim=1)
    if not (torch.equal(deq, ref) and torch.equal(codes * s_full, ref)):  # what DequantizeLinear computes
        raise DeployError("the INT8 codes do not reproduce torchao's fake-quantized weight; cannot export exactly")
    sc = scale.reshape(w.shape[0], -1).numpy()
    return codes.to(torch.int8).numpy(), (sc.reshape(-1) if sc.shape[1] == 1 else sc), ref.numpy()


def activation_qparams(model: nn.Module) -> dict[str, tuple[float, int, str]]:
    """{quantizer name: (scale, zero point, "uint8"/"int8")} of every static quantizer; a scale that is zero,
    negative or not finite is refused here, naming the layer."""
    from labkit.quant.static import static_quantizers

    out = {}
    for name, q in static_quantizers(model).items():
        s = float(q.scale.detach())
        if not (math.isfinite(s) and s > 0):
            raise DeployError(f"layer {name}: activation scale {s!r} is not a positive finite number; re-run "
                              "calibrate_static on real rows (or restore the learned scales) before exporting")
        if q.mode != "quantize":
            raise DeployError(f"layer {name}: the quantizer is in mode {q.mode!r}, not 'quantize'; calibrate first")
        out[name] = (np.float32(s), int(q.zero_point), q.dtype)
    return out


class _ExportQuantizer(nn.Module):
    """What a StaticQuantizer becomes for tracing: one fake_quantize_per_tensor_affine, exported as Q -> DQ."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.scale, self.zero_point, self.qmin, self.qmax = float(scale), int(zero_point), qmin, qmax

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)


def _export_copy(model: nn.Module) -> tuple[nn.Module, dict[str, tuple], list[str]]:
    """A float copy for tracing: dequantized weights, quantizers as Q/DQ; {linear: (codes, scale, deq)}; and the
    quantizer names in probe order. Quantizer i is traced with the probe scale i + 1 (exact in float32), so each
    QuantizeLinear in the graph is traced back to its quantizer by value, whatever the exporter names it; the
    real scales are written in afterwards (`_write_scales`)."""
    from labkit.quant.static import StaticQuantizer, StaticQuantLinear

    twin = copy.deepcopy(model).eval()
    weights = {}
    for name, m in list(twin.named_modules()):
        if isinstance(m, StaticQuantLinear):
            codes, scale, deq = weight_codes(m)
            weights[name] = (codes, scale, deq)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(deq))
            m.weight_fake_quantizer = nn.Identity()
    seen: dict[int, _ExportQuantizer] = {}
    order = [n for n, _ in twin.named_modules() if isinstance(_, StaticQuantizer)]  # = static_quantizers(model)
    index = {id(m): i for i, (n, m) in enumerate((n, m) for n, m in twin.named_modules()
                                                  if isinstance(m, StaticQuantizer))}
    for _, m in list(twin.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, StaticQuantizer):
                if id(child) not in seen:
                    seen[id(child)] = _ExportQuantizer(float(index[id(child)] + 1), int(child.zero_point),
                                                       child.qmin, child.qmax)
                setattr(m, child_name, seen[id(child)])
    return twin, weights, order


# ----------------------------------------------------------------------------------- export


def _key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, a.tobytes()


def export_static_qdq(model: nn.Module, path: str | Path, opset: int = 17) -> dict:
    """Write a static INT8 model (`prepare_static` + calibration, PTQ or QAT) as a QDQ ONNX graph; returns a
    summary (path, counts, size). Refuses bad scales (naming the layer) and checks the file against the model."""
    import onnx
    from onnx import helper, numpy_helper

    from labkit.quant.static import static_state

    state = static_state(model)
    if state is None:
        raise DeployError("export_static_qdq takes a model prepared by labkit.quant.static.prepare_static")
    if state.config.weight_bits not in (7, 8):
        raise DeployError("QDQ export covers INT8 weights; 4-bit weights deploy through MatMulNBits")
    act = activation_qparams(model)  # refuses bad scales before any work
    twin, weights, order = _export_copy(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = getattr(getattr(model, "config", None), "vocab_size", 2000)
    ids = torch.randint(min(1000, vocab // 2), min(2000, vocab), (2, 16))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES} | {"logits": {0: "batch"}}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(twin, args, str(raw), input_names=list(INPUT_NAMES), output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
        graph = onnx.load(str(raw))
    g = graph.graph
    inits = {i.name: i for i in g.initializer}
    by_key = {}
    for name, (codes, scale, deq) in weights.items():
        by_key[_key(deq.T)] = (name, "t")
        by_key[_key(deq)] = (name, "n")
    meta: dict = {"linears": {}, "activations": {}}
    new_nodes, replaced = [], set()
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits and n.input[1] not in replaced:
            hit = by_key.get(_key(numpy_helper.to_array(inits[n.input[1]])))
            if hit is None:
                continue
            name, layout = hit
            codes, scale, _ = weights[name]
            stored = codes.T if layout == "t" else codes
            w_name, s_name, z_name = f"{name}.weight_int8", f"{name}.weight_scale", f"{name}.weight_zero_point"
            g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(stored), w_name),
                                  numpy_helper.from_array(scale.astype(np.float32), s_name),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name)])
            new_nodes.append(helper.make_node("DequantizeLinear", [w_name, s_name, z_name], [n.input[1]],
                                              name=f"{name}/weight/DequantizeLinear", axis=1 if layout == "t" else 0))
            replaced.add(n.input[1])
            meta["linears"][name] = {"codes": w_name, "scale": s_name, "layout": layout}
    missing = sorted(set(weights) - set(meta["linears"]))
    if missing:
        raise DeployError(f"{len(missing)} INT8 weight(s) were not found in the exported graph: {missing[:4]}")
    keep = [i for i in g.initializer if i.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    meta["activations"] = _write_scales(g, act, order)
    graph.metadata_props.append(onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(meta)))
    onnx.save(graph, str(path))
    report = check_artifact(path, model)
    return {"path": str(path), "int8_linears": len(meta["linears"]), "activation_quantizers": len(act),
            "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in g.node), "check": report,
            "size_mb": path.stat().st_size / 1e6}


def _write_scales(g, act: dict, order: list[str]) -> dict:
    """Replace each Q/DQ pair's probe scale (quantizer index + 1) by that quantizer's real scale; returns
    {quantizer: {scale, zero_point (tensor names), values, dtype, nodes}}."""
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return numpy_helper.to_array(consts[name].attribute[0].t)

    def write(name, arr):
        t = numpy_helper.from_array(arr, name)
        if name in inits:
            inits[name].CopyFrom(t)
        else:
            consts[name].attribute[0].t.CopyFrom(t)

    out: dict[str, dict] = {}
    written: set[str] = set()
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[1] in written:
            continue
        if n.input[0].endswith(("weight_int8",)):
            continue
        probe = float(value(n.input[1]))
        i = int(probe) - 1
        if probe != i + 1 or not 0 <= i < len(order):
            raise DeployError(f"{n.op_type} {n.name!r} belongs to no static quantizer of the model")
        name = order[i]
        scale, zp, dtype = act[name]
        write(n.input[1], np.array(scale, np.float32))
        written.add(n.input[1])
        e = out.setdefault(name, {"scale": n.input[1], "zero_point": n.input[2], "nodes": []})
        e["nodes"].append(n.name)
        zarr = value(n.input[2])
        e.update(scale_value=float(scale), zero_point_value=int(zarr), dtype=str(zarr.dtype))
    return out


# ----------------------------------------------------------------------------------- checks and loading


def check_artifact(path: str | Path, model: nn.Module) -> dict:
    """Every INT8 weight, weight scale and activation scale/zero point in the file equals the model's, bit for
    bit; otherwise ScaleMismatchError naming the first layer that differs."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; write one with export_static_qdq(model, path)")
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}.get(META_KEY)
    if meta is None:
        raise DeployError(f"{path} was not written by export_static_qdq (no {META_KEY} metadata)")
    meta = json.loads(meta)
    arrays = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    from labkit.quant.static import StaticQuantLinear

    linears = {n: mod for n, mod in model.named_modules() if isinstance(mod, StaticQuantLinear)}
    if set(linears) != set(meta["linears"]):
        extra = sorted(set(linears) ^ set(meta["linears"]))
        raise ScaleMismatchError(f"{path.name}: layer {extra[0]} is quantized in one of file and model only")
    for name, mod in linears.items():
        codes, scale, _ = weight_codes(mod)
        e = meta["linears"][name]
        stored = arrays[e["codes"]]
        stored = stored.T if e["layout"] == "t" else stored
        if stored.dtype != np.int8 or not np.array_equal(stored, codes):
            raise ScaleMismatchError(f"{path.name}: layer {name}: the INT8 weight codes differ from the model's")
        if not np.array_equal(arrays[e["scale"]], scale.astype(np.float32)):
            raise ScaleMismatchError(f"{path.name}: layer {name}: the weight scales differ from the model's")
    act = activation_qparams(model)
    if set(act) != set(meta["activations"]):
        extra = sorted(set(act) ^ set(meta["activations"]))
        raise ScaleMismatchError(f"{path.name}: activation quantizer {extra[0]} is in one of file and model only")
    for name, (s, z, dtype) in act.items():
        e = meta["activations"][name]
        fs, fz = arrays.get(e["scale"]), arrays.get(e["zero_point"])
        fs = np.float32(e["scale_value"]) if fs is None else np.float32(fs)
        fz = e["zero_point_value"] if fz is None else int(fz)
        if fs.tobytes() != np.float32(s).tobytes() or fz != z or e["dtype"] != dtype:
            raise ScaleMismatchError(f"{path.name}: layer {name}: activation scale/zero point in the file "
                                     f"({float(fs)!r}, {fz}) differ from the model's ({float(s)!r}, {z}); export "
                                     "this model again with export_static_qdq")
    return {"linears": len(linears), "activations": len(act), "identical": True}


def load_static_artifact(path: str | Path, model: nn.Module, runtime: str = "ort", threads: int = 1):
    """A runtime classifier for a QDQ file, after checking that its weights and scales are `model`'s."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not supported; use one of {RUNTIMES}")
    check_artifact(path, model)
    if runtime == "ort":
        from labkit.deploy.onnx_runtime import OnnxClassifier

        return OnnxClassifier(path, threads=threads)
    from labkit.deploy.openvino_runtime import OpenVinoClassifier

    return OpenVinoClassifier(path, threads=threads)


def fused_ops(path: str | Path, threads: int = 1) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (after its QDQ fusions), from its optimized model."""
    import onnx

    from labkit.deploy.onnx_runtime import _session, session_options

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(threads)
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        _session(path, so)
        g = onnx.load(so.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for n in g.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


__all__ = ["META_KEY", "ScaleMismatchError", "activation_qparams", "check_artifact", "export_static_qdq",
           "fused_ops", "load_static_artifact", "weight_codes"]
