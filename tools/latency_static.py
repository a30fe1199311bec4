"""Rank the static INT8 deploy paths against the `quantize_dynamic` peer and FP32 on this CPU (interleaved rounds).

    python tools/latency_static.py --out /tmp/static_lat --rounds 10 --threads 1 --batch 8 --seq 128

Builds every artifact from the pretrained MiniLM (kernel time does not depend on the weight values; a trained
model's artifacts have the same graphs), then times each one round-robin: p10 / p50 / p90 in ms per call.
Rank candidates with it on a busy machine; report numbers only from a quiet one.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from labkit.deploy.onnx_export import export_onnx, optimize_bert, quantize_dynamic_peer
from labkit.deploy.onnx_runtime import OnnxClassifier
from labkit.deploy.qdq_export import export_static_qdq, fused_ops
from labkit.measure.timing import p10_p90
from labkit.models import load_classifier
from labkit.quant.static import StaticInt8Config, calibrate_static, prepare_static

LAYERS = r"^bert\.(encoder|pooler)\."
STATIC = {
    "a": dict(),
    "b-attn": dict(attention=True),
    "b-full": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True),
}


def inputs(batch: int, seq: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def build(out: Path, static: list[str]) -> dict[str, Path]:
    fp32, tok = load_classifier("minilm-l6", num_labels=2, device="cpu")
    fp32.eval()
    arts = {}
    raw = export_onnx(fp32, out / "fp32_raw.onnx")
    arts["ort-fp32"] = optimize_bert(raw, out / "fp32.onnx", 12, 384)[0]
    arts["ort-peer"] = quantize_dynamic_peer(raw, out / "peer.onnx")
    calib = [tok(["a gripping, funny and moving film", "dull and far too long"] * 8, padding=True,
                 return_tensors="pt")]
    for name in static:
        m = prepare_static(copy.deepcopy(fp32), StaticInt8Config(layers=LAYERS, weight_bits=7, **STATIC[name]))
        calibrate_static(m, calib)
        arts[f"static-{name}"] = Path(export_static_qdq(m, out / f"static_{name}.onnx")["path"])
    return arts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/static_lat")
    ap.add_argument("--static", default=",".join(STATIC))
    ap.add_argument("--runtimes", default="ort,openvino")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "artifacts.json"
    if args.rebuild or not index.exists():
        arts = build(out, args.static.split(","))
        index.write_text(json.dumps({k: str(v) for k, v in arts.items()}))
    arts = {k: Path(v) for k, v in json.loads(index.read_text()).items()}
    x = inputs(args.batch, args.seq, 30522)
    fns = {}
    for name, path in arts.items():
        if "ort" in args.runtimes.split(",") or name.startswith("ort-"):
            clf = OnnxClassifier(path, threads=args.threads, default_options=name == "ort-peer")
            feeds = clf.feeds(x)
            fns[name if name.startswith("ort-") else f"ort-{name}"] = (lambda c=clf, f=feeds: c.run(f))
        if "openvino" in args.runtimes.split(",") and not name.startswith("ort-peer"):
            from labkit.deploy.openvino_runtime import OpenVinoClassifier

            ov = OpenVinoClassifier(path, threads=args.threads)
            feeds = ov.feeds(x)
            fns[f"ov-{name.removeprefix('ort-')}"] = (lambda c=ov, f=feeds: c.run(f))
    for fn in fns.values():
        fn()
        fn()
    times = {n: [] for n in fns}
    for _ in range(args.rounds):
        for n, fn in fns.items():
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times[n].append((time.perf_counter() - t0) * 1e3)
    peer = statistics.median(times["ort-peer"])
    rows = []
    for n, ts in times.items():
        p10, p90 = p10_p90(ts)
        rows.append({"variant": n, "p10_ms": round(p10, 1), "p50_ms": round(statistics.median(ts), 1),
                     "p90_ms": round(p90, 1), "vs_peer_p50": round(statistics.median(ts) / peer, 3), "n": len(ts)})
    p10_peer = p10_p90(times["ort-peer"])[0]
    for r in sorted(rows, key=lambda r: r["p50_ms"]):
        beyond = "p90 < peer p10" if r["p90_ms"] < p10_peer else ""
        print(f"{r['variant']:22s} {r['p50_ms']:8.1f} ({r['p10_ms']:.1f}-{r['p90_ms']:.1f}) "
              f"x{r['vs_peer_p50']:.2f} {beyond}")
    with (out / "latency.jsonl").open("a") as f:
        f.write(json.dumps({"threads": args.threads, "batch": args.batch, "seq": args.seq, "rows": rows,
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    if "--ops" in sys.argv:
        for n, path in arts.items():
            print(n, fused_ops(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
