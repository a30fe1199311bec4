"""Which static INT8 regime breaks PTQ and lets QAT repair it? An exploration driver (CPU budget), outside labkit.

    python tools/explore_static.py finetune --steps 600 --seed 0          # FP32 fine-tune on a subset, saved
    python tools/explore_static.py ptq --candidates a,b-attn,b-full,c-w4  # PTQ min-max / percentile / mse
    python tools/explore_static.py qat --candidates b-full --steps 300     # QAT from the best calibration

Models go to --work (default /tmp/static_explore, never committed); each measurement is appended to
<work>/results.jsonl as it finishes, and a measurement already there is not redone.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

from labkit.data import load_text_classification, tokenize_classification
from labkit.models import load_classifier
from labkit.quant.static import (
    StaticInt8Config,
    calibrate_static,
    freeze_scales,
    learn_scales,
    prepare_static,
    static_quantizers,
)

LAYERS = r"^bert\.(encoder|pooler)\."
CANDIDATES = {
    "a": dict(),  # Linear inputs only (today's ptq-static, as control)
    "b-attn": dict(attention=True),  # + QK^T / PV inputs, softmax output
    "b-resid": dict(outputs=r"output\.dense$", layernorm_inputs=True),  # + projections' outputs, residual sums
    "b-full": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True),  # whole encoder integer
    "c-w4": dict(weight_bits=4, weight_group_size=32),  # 4-bit group-32 weights, static 8-bit Linear inputs
    "c-w4-g128": dict(weight_bits=4, weight_group_size=128),
    # the deploy-exact variants: 7-bit weight codes (exact INT8 GEMMs on x86 without VNNI, see labkit.quant.static)
    "a-w7": dict(weight_bits=7),
    "b-attn-w7": dict(attention=True, weight_bits=7),
    "b-full-w7": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True, weight_bits=7),
    # symmetric INT8 activations (zero point 0), as runtimes without zero points take them
    "b-full-sym": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True, activation_dtype="int8"),
    "b-full-sym-w7": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True, activation_dtype="int8",
                          weight_bits=7),
    # 4-bit weights (round to nearest, groups of 128 or 384 along the input) under the same integer encoder
    "b-full-sym-w4": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True, activation_dtype="int8",
                          weight_bits=4, weight_group_size=128),
    "b-full-sym-w4-g384": dict(attention=True, outputs=r"output\.dense$", layernorm_inputs=True,
                               activation_dtype="int8", weight_bits=4, weight_group_size=384),
}
OBSERVERS = ("minmax", "percentile", "mse")


DEVICE = "cpu"


def collate(rows, tokenizer):
    from transformers import DataCollatorWithPadding

    b = dict(DataCollatorWithPadding(tokenizer)(rows))
    b.setdefault("token_type_ids", torch.zeros_like(b["input_ids"]))
    return {k: v.to(DEVICE) for k, v in b.items()}


def batches(ds, tokenizer, bs, seed=None, limit=None):
    idx = list(range(len(ds)))
    if seed is not None:
        random.Random(seed).shuffle(idx)
    if limit is not None:
        idx = idx[: limit * bs]
    for s in range(0, len(idx), bs):
        yield collate([ds[i] for i in idx[s:s + bs]], tokenizer)


@torch.no_grad()
def accuracy(model, ev, tokenizer, bs=64) -> float:
    """Accuracy in % on every row of `ev`; batches of similar length (less padding, same predictions)."""
    model.eval()
    order = sorted(range(len(ev)), key=lambda i: len(ev[i]["input_ids"]))
    correct = 0
    for s in range(0, len(order), bs):
        b = collate([ev[i] for i in order[s:s + bs]], tokenizer)
        labels = b.pop("labels")
        correct += int((model(**b).logits.argmax(-1) == labels).sum())
    return 100.0 * correct / len(ev)


def train(model, tr, tokenizer, steps, groups, bs=32, seed=0, warmup=0.06, log=50) -> dict:
    """AdamW, linear warm-up and decay, grad-norm clip 1.0."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]
    params = [p for g in groups for p in g["params"]]
    w = max(1, int(warmup * steps))
    step, epoch, t0, losses = 0, 0, time.time(), []
    while step < steps:
        for b in batches(tr, tokenizer, bs, seed=seed * 1000 + epoch):
            f = (step + 1) / w if step < w else max(0.0, (steps - step) / max(1, steps - w))
            for g, lr0 in zip(opt.param_groups, base, strict=True):
                g["lr"] = lr0 * f
            loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % log == 0:
                print(f"  step {step}/{steps} loss {sum(losses[-log:]) / log:.4f} {time.time() - t0:.0f}s", flush=True)
            if step >= steps:
                break
        epoch += 1
    model.eval()
    return {"steps": steps, "final_loss": sum(losses[-log:]) / min(log, len(losses)),
            "train_s": round(time.time() - t0)}


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def record(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("finetune", "ptq", "qat"))
    ap.add_argument("--work", default="/tmp/static_explore")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=None, help="weights (finetune 5e-5, qat 2e-5)")
    ap.add_argument("--scale-lr", type=float, default=1e-3,
                    help="relative: each scale's Adam learning rate is this times its calibrated value")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--observers", default=",".join(OBSERVERS))
    ap.add_argument("--qat-observer", default=None, help="calibration QAT starts from (default: the best PTQ one)")
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=None, help="finetune rows (default steps x 32; all: 67349)")
    ap.add_argument("--qat-rows", type=int, default=20000, help="training rows QAT and calibration draw from")
    ap.add_argument("--device", default="cpu", help="where training and evaluation run (cpu or cuda)")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    ckpt = work / f"fp32_s{args.seed}"
    base_key = f"fp32_s{args.seed}"

    if args.stage == "finetune":
        torch.manual_seed(args.seed)
        model, tok = load_classifier("minilm-l6", num_labels=2, device=DEVICE)
        n = args.n_train or args.steps * 32
        tr = tokenize_classification(load_text_classification("sst2", "train", n=min(n, 67349), seed=args.seed), tok)
        ev = tokenize_classification(load_text_classification("sst2", "validation"), tok)
        info = train(model, tr, tok, args.steps, [{"params": list(model.parameters()), "lr": args.lr or 5e-5}],
                     seed=args.seed)
        acc = accuracy(model, ev, tok)  # on DEVICE, before the checkpoint moves to the CPU
        model.to("cpu").save_pretrained(ckpt)
        tok.save_pretrained(ckpt)
        record(results, {"key": f"{base_key}/fp32", "variant": "fp32", "acc": acc, **info, "n_train": len(tr)})
        return 0

    if not ckpt.exists():
        print(f"no fine-tuned model at {ckpt}: run the finetune stage first", file=sys.stderr)
        return 2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    fp32 = AutoModelForSequenceClassification.from_pretrained(ckpt).to(DEVICE).eval()
    ev = tokenize_classification(load_text_classification("sst2", "validation"), tok)
    # calibration and QAT rows: training rows the fine-tune did not see first (another shuffle seed)
    tr = tokenize_classification(load_text_classification("sst2", "train", n=args.qat_rows, seed=args.seed + 100), tok)
    calib = list(batches(tr, tok, 32, seed=1, limit=args.calib_batches))
    have = done_keys(results)
    for cand in args.candidates.split(","):
        cfg_kw = dict(layers=LAYERS, **CANDIDATES[cand])
        if args.stage == "ptq":
            for obs in args.observers.split(","):
                key = f"{base_key}/{cand}/ptq-{obs}"
                if key in have:
                    continue
                t0 = time.time()
                m = prepare_static(copy.deepcopy(fp32), StaticInt8Config(**cfg_kw, observer=obs))
                calibrate_static(m, calib)
                freeze_scales(m)
                record(results, {"key": key, "candidate": cand, "variant": f"ptq-{obs}", "acc": accuracy(m, ev, tok),
                                 "calib_rows": 32 * len(calib), "quantizers": len(static_quantizers(m)),
                                 "s": round(time.time() - t0)})
        else:
            obs = args.qat_observer or best_observer(results, base_key, cand)
            key = f"{base_key}/{cand}/qat-{obs}-{args.steps}-lr{args.lr or 2e-5}-slr{args.scale_lr}"
            if key in have:
                continue
            m = prepare_static(copy.deepcopy(fp32), StaticInt8Config(**cfg_kw, observer=obs))
            calibrate_static(m, calib)
            scales = learn_scales(m)
            ids = {id(p) for p in scales}
            weights = [p for p in m.parameters() if id(p) not in ids and p.requires_grad]
            groups = [{"params": weights, "lr": args.lr or 2e-5}]
            groups += [{"params": [p], "lr": args.scale_lr * float(p.detach())} for p in scales]
            info = train(m, tr, tok, args.steps, groups, seed=args.seed)
            freeze_scales(m)
            record(results, {"key": key, "candidate": cand, "variant": f"qat-{obs}", "acc": accuracy(m, ev, tok),
                             **info})
            torch.save({n: q.scale.detach() for n, q in static_quantizers(m).items()},
                       work / f"{cand}_qat_scales_s{args.seed}.pt")
            torch.save({k: v.cpu() for k, v in m.state_dict().items()}, work / f"{cand}_qat_s{args.seed}.pt")
    return 0


def best_observer(results: Path, base_key: str, cand: str) -> str:
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()] if results.exists() else []
    ptq = [r for r in rows if r["key"].startswith(f"{base_key}/{cand}/ptq-")]
    return max(ptq, key=lambda r: r["acc"])["variant"][4:] if ptq else "mse"


if __name__ == "__main__":
    sys.exit(main())
