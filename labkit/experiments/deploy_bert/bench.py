"""`python -m labkit.bench deploy`: the QAT BERT on a CPU, torchao and ONNX Runtime side by side (notebook 01b),
and its targets. Stage `accuracy` (per seed, `seed` records): the FP32/QAT pair trained with notebook 01's recipe or
loaded from a `bench qat` run (--models-from), exported, every variant's accuracy and label agreement; stage
`latency` (once, one `latency` table per thread count): interleaved p10/p50/p90 and the INT8 profiles. The accuracy
stage can run on a GPU machine and the latency stage later on the CPU by --resume of the same run folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, replace

import torch

from labkit.experiments import protocol
from labkit.experiments.deploy_bert import pipeline as dp
from labkit.experiments.protocol import flag, seed_list
from labkit.measure.stats import MIN_SEEDS, Target, format_spread, ratio_verdict, spread, verdict, verdict_text

NAME = "deploy_bert"
STAGES = ("accuracy", "latency")
FP32_GAP_LIMIT = 0.3  # points: deployed INT8 at most this far below FP32
MATCH_LIMIT = 0.1  # points: the deployed artifact vs the PyTorch QAT model
LATENCY_LIMIT = 0.40  # best INT8 deploy path / PyTorch FP32 eager, batch 8 x 128, 1 thread
SIZE_LIMIT = 0.3
NOTES = [
    "accuracy (stage 'accuracy'): per seed, one FP32 fine-tune and its QAT copy (notebook 01's recipe, or loaded "
    "from a `bench qat` run); every variant evaluated on the same eval set, every batch padded to 128 tokens; "
    "targets judged on the mean over seeds with the sd",
    "label agreement: sentences each variant labels differently from torchao eager; torchao compiled vs eager runs "
    "the same INT8 codes and scales, so its count is the float-rounding noise floor of per-token INT8. Why it is "
    "not zero: with scale = absmax / 127.5 each token's largest element lands on +-127.5, a rounding tie, so a "
    "one-ulp difference in the float ops before it (LayerNorm, softmax order) decides its code (-127 or -128)",
    "latency (stage 'latency', measured once): one set of models, the first seed's when the run has them, else the "
    "pretrained checkpoint and its QAT conversion without training; CPU kernel time does not depend on the weight "
    "values. One process, rounds interleaved across every variant; p10/p50/p90 over rounds x repeat calls after "
    "warm-up (compilation included in warm-up); full-length batches (every position a real token)",
    "the machine is shared with other jobs: spread (p10-p90) is reported, compare within one thread count",
    "ort-peer-int8 runs with ORT's default session options (threads set); the lab's sessions use ORT_ENABLE_ALL, "
    "sequential execution",
    "each seed and the latency block carry the provenance of the process that measured them (the accuracy stage "
    "may run on another machine's CPU, with training on its GPU)",
]


def thread_counts(text: str) -> tuple[int, ...]:
    """'1,all' -> (1, os.cpu_count()); refuses anything else with the fix."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if part == "all" or (part.isdigit() and int(part) >= 1):
            out.append(os.cpu_count() or 1 if part == "all" else int(part))
        else:
            raise argparse.ArgumentTypeError(f"{text!r}: {part!r} is not a thread count; use e.g. '1,all' or '1,2'")
    return tuple(dict.fromkeys(out))


@dataclass
class Settings(protocol.Settings):
    model: str = flag("minilm-l6", "classifier name (labkit.models) or hub id")
    stages: tuple[str, ...] = flag(STAGES, "comma-separated stages to run: accuracy (per seed: train or load, export, "
                                           "accuracy and label agreement of every variant), latency (once)",
                                   choices=STAGES)
    seeds: tuple[int, ...] | None = flag(None, "comma-separated seeds (full: 0,1,2; quick: 0)", parse=seed_list)
    models_from: str | None = flag(None, "load each seed's trained FP32 and QAT models from a `bench qat` run folder "
                                         "(runs/<run>/models/seed<k>/) instead of training them")
    train_device: str | None = flag(None, "where training runs (full: auto = a GPU when visible); export, ORT, "
                                          "accuracy and latency always run on the CPU", choices=("cpu", "cuda", "auto"))
    threads: tuple[int, ...] = flag((1, os.cpu_count() or 1), "latency thread counts, e.g. 1,all (the default)",
                                    parse=thread_counts)
    batch_sizes: tuple[int, ...] = flag((1, 8), "latency batch sizes")
    seq_len: int = flag(128, "latency sequence length")
    rounds: int = flag(2, "interleaved latency rounds (full: 8)")
    fp32_steps: int | None = flag(None, "FP32 fine-tuning steps (default: the profile's)")
    extra_steps: int | None = flag(None, "QAT steps (default: the profile's)")
    n_train: int | None = flag(None, "training rows (default: the profile's)")
    n_eval: int | None = flag(None, "eval rows (default: the profile's; full = all)")
    compile: bool = flag(True, "skip the torch.compile variants (also the compiled-vs-eager noise floor)")
    train_threads: int | None = flag(None, "torch threads while training on the CPU")
    PROFILE_DEFAULTS = {"full": dict(rounds=8)}

    def device_slug(self) -> str:
        return "cpu"  # the deployment target: ONNX export, ORT, accuracy and latency all run on the CPU

    def training(self):
        """The QATBertConfig that trains (or names) each seed's models: notebook 01's recipe for this profile."""
        from labkit.experiments.qat_bert.pipeline import QATBertConfig

        given = {k: getattr(self, k) for k in ("model", "fp32_steps", "extra_steps", "n_train", "n_eval",
                                              "train_device", "seeds") if getattr(self, k) is not None}
        cfg = QATBertConfig.for_profile(self.profile, **given, compile=self.compile)
        return replace(cfg, train_device="cpu") if self.models_from and self.train_device is None else cfg


def check(settings: Settings, options) -> None:
    """The training config, the model, the --models-from folder (for the seeds still to load), and that
    --update-reference will have every stage."""
    from labkit.models import UnknownModelError, meta_model
    from labkit.results.files import read_jsonl

    cfg = settings.training()
    try:
        cfg.validate()
    except ValueError as err:
        raise ValueError(f"--seeds/--steps/--train-device: {err}") from None
    try:
        meta_model(cfg.model, "classifier")
    except UnknownModelError as err:
        raise ValueError(f"--model {cfg.model!r}: {err}") from None
    recorded = read_jsonl(options.paths[1]) if options.resume and options.paths[1] else []
    seeds_done = {r["seed"] for r in recorded if r.get("record") == "seed"}
    if settings.models_from is not None:  # only the seeds this call still has to load: a resume may take them elsewhere
        wanted = [s for s in cfg.seeds if s not in seeds_done] if "accuracy" in settings.stages else cfg.seeds[:1]
        dp.check_models_from(settings.models_from, wanted, cfg.model)
    if options.update_reference:
        have = {"accuracy": set(cfg.seeds) <= seeds_done,
                "latency": any(r.get("record") == "latency" for r in recorded)}
        missing = [s for s in STAGES if s not in settings.stages and not have[s]]
        if missing:
            raise ValueError(f"--update-reference with --stages {','.join(settings.stages)}: the reference needs every "
                             f"stage, and this run has no {' or '.join(missing)} results "
                             f"{'for every seed ' if 'accuracy' in missing else ''}to reuse; add {','.join(missing)} "
                             "to --stages (or --resume the run that measured them)")


def measure(settings: Settings, run) -> None:
    from labkit.deploy.onnx_runtime import build_artifacts
    from labkit.env import package_version, provenance

    s, cfg, result = settings, settings.training(), run.result
    repeat, warmup = (3, 2) if s.profile == "full" else (2, 1)
    command = result["provenance"]["command"]

    def here() -> dict:
        return {**provenance(command, s.profile), "onnx": package_version("onnx"),
                "onnxruntime": package_version("onnxruntime"), "cpu_flags": dp.cpu_flags()}

    result.update(provenance=here(), cpu_flags=dp.cpu_flags(), labels=dp.LABELS, notes=NOTES,
                  config={**cfg.as_dict(), **s.as_dict(), "layers": str(cfg.layers), "seeds": list(cfg.seeds),
                          "repeat": repeat, "warmup": warmup})
    seeds = {str(r["seed"]): r for r in run.recorded("seed")}
    wanted = {v for v in dp.TORCH_VARIANTS if s.compile or not v.endswith("-compiled")} | set(dp.ORT_VARIANTS)
    tables = {}
    for r in run.recorded("latency"):  # the newest table per thread count; one that lacks a variant is redone
        if wanted <= {x["variant"] for x in r["rows"]}:
            tables[r["threads"]] = r
        else:
            print(f"resume: the latency at {r['threads']} thread(s) lacks variant(s) this version times; measuring it "
                  "again", flush=True)
            tables.pop(r["threads"], None)
    profiles = {k: r["profile"] for k in ("profile_int8", "profile_ort") for r in run.recorded(k)[-1:]}

    def fill() -> None:  # the summary blocks, from what is measured so far
        result.update(seed_results=seeds, seeds=sorted(int(k) for k in seeds), **profiles,
                      latency=[row for t in sorted(tables) for row in tables[t]["rows"]],
                      stages_done={"accuracy": sorted(int(k) for k in seeds), "latency": sorted(tables)})
        if seeds:
            result.update(summaries(seeds), sizes_mb=seeds[str(min(map(int, seeds)))].get("sizes_mb", {}))
        if tables:
            last = tables[max(tables)]
            result["latency_info"] = {"models": last.get("models"), "provenance": last.get("provenance"),
                                      "threads": sorted(tables)}

    fill()
    first = None
    if "accuracy" in s.stages:
        for seed in (x for x in cfg.seeds if str(x) not in seeds):
            print(f"  seed {seed}: {'loading' if s.models_from else 'training'} the FP32 and QAT models", flush=True)
            if s.train_threads:
                torch.set_num_threads(s.train_threads)
            trained = dp.train_models(replace(cfg, seed=seed), s.models_from)
            accuracy = dp.seed_accuracy(trained["fp32"], trained["qat"], trained["eval_ds"], trained["tokenizer"],
                                        compiled=s.compile)
            seeds[str(seed)] = run.record("seed", {"seed": seed, "training": trained["info"], "provenance": here(),
                                                   **accuracy})
            first = first or (trained if seed == cfg.seeds[0] else None)
            fill()
    if "latency" in s.stages and (set(s.threads) - set(tables) or "profile_ort" not in profiles
                                  or (s.compile and "profile_int8" not in profiles)):
        if first:
            fp32, qat, which = first["fp32"], first["qat"], f"seed {cfg.seeds[0]} of this run"
        elif s.models_from is not None:
            fp32, qat, _ = dp.load_models(s.models_from, cfg.seeds[0], cfg.model)
            which = f"seed {cfg.seeds[0]} loaded from {s.models_from}"
        else:  # timing does not depend on the weights
            (fp32, qat), which = dp.timing_models(cfg), "the pretrained checkpoint and its QAT conversion, untrained"
        info, vocab = {"models": which, "provenance": here()}, fp32.config.vocab_size
        with tempfile.TemporaryDirectory() as tmp:
            paths = dp.ort_paths(build_artifacts(fp32, qat, tmp))
            for t in (t for t in s.threads if t not in tables):
                rows = dp.latency_table({"torch-fp32": fp32, "torchao-int8": qat}, paths, t, s.batch_sizes, s.seq_len,
                                     vocab, s.rounds, repeat, warmup, compiled=s.compile)
                tables[t] = run.record("latency", {**info, "threads": t, "rows": rows}, quiet=True)
                print(f"  latency at {t} thread(s) done", flush=True)
                fill()
            if "profile_ort" not in profiles:  # where the deployed INT8 graphs spend their time, 1 thread
                profiles["profile_ort"] = dp.profile_ort({v: paths[v] for v in dp.PROFILED_ORT}, 8, s.seq_len, vocab)
                run.record("profile_ort", {"profile": profiles["profile_ort"], **info}, quiet=True)
        if s.compile and "profile_int8" not in profiles:
            torch.set_num_threads(1)
            profiles["profile_int8"] = dp.profile_int8(qat, 8, s.seq_len, vocab)
            run.record("profile_int8", {"profile": profiles["profile_int8"]}, quiet=True)
    fill()


def summaries(seed_results: dict) -> dict:
    """Accuracy (points) and label disagreement per variant over the seeds: mean, sd, per seed."""
    seeds = [seed_results[k] for k in sorted(seed_results, key=int)]
    acc, differ = {}, {}
    for variant in dict.fromkeys(v for s in seeds for v in s["accuracy"]):
        vals = [100 * s["accuracy"][variant]["accuracy"] for s in seeds if variant in s["accuracy"]]
        sp = spread(vals)
        acc[variant] = {"mean": sp.mean, "sd": sp.sd, "n": sp.n, "per_seed": vals}
        counts = [s["differ_from_torchao_eager"][variant] for s in seeds if variant in s["differ_from_torchao_eager"]]
        differ[variant] = {"mean": sum(counts) / len(counts), "per_seed": counts}
    return {"accuracy_summary": acc, "agreement_summary": differ}


# ---------------------------------------------------------------------------------------------------------------
# targets, judged over the seeds with their spread


def _acc(seed: dict, variant: str) -> float | None:
    a = seed.get("accuracy", {}).get(variant)
    return None if a is None else 100 * a["accuracy"]


def _paired(seeds: list[dict], a: str, b: str) -> list[float]:
    """(a - b) accuracy in points, per seed where both were measured."""
    return [_acc(s, a) - _acc(s, b) for s in seeds if _acc(s, a) is not None and _acc(s, b) is not None]


def _accs(seeds: list[dict], variant: str) -> list[float]:
    return [a for s in seeds if (a := _acc(s, variant)) is not None] or [float("nan")]


def match_check(seeds: list[dict]) -> Target:
    """"Deployed artifact matches the PyTorch QAT model within 0.1 point": mean ORT - torchao difference over seeds,
    judged against a floor measured in the same run, the sentences torchao's own compiled model labels differently
    from torchao eager. met: mean |difference| <= 0.1 point; within noise: larger, but not larger than the floor;
    else missed; no verdict with fewer than 3 seeds."""
    target = f"deployed artifact matches the PyTorch QAT model within {MATCH_LIMIT} point"
    diffs = _paired(seeds, "ort-qat-int8", "torchao-int8")
    if not diffs:
        return Target.not_measured(target)
    used = [s for s in seeds if _acc(s, "ort-qat-int8") is not None and _acc(s, "torchao-int8") is not None]
    differ = [s.get("differ_from_torchao_eager", {}).get("ort-qat-int8") for s in used]
    floor_n = [s.get("differ_from_torchao_eager", {}).get("torchao-int8-compiled") for s in used]
    floor_pts = [100 * f / s["n_eval"] for f, s in zip(floor_n, used, strict=True) if f is not None]
    sp = spread(diffs)
    floor = spread(floor_pts).mean if floor_pts else None
    word = ("no verdict" if sp.n < MIN_SEEDS else "met" if abs(sp.mean) <= MATCH_LIMIT
            else "within noise" if floor is not None and abs(sp.mean) <= floor else "missed")
    floor_text = (f"torchao compiled vs eager differ on {floor_n} sentences = {floor:.2f} points (the floor)"
                  if floor is not None else "no compiled-vs-eager floor measured")
    return Target(target, f"ORT - torchao {format_spread(sp)} points; sentences labelled differently per seed {differ} "
                          f"of {used[0]['n_eval']}; {floor_text}", word, sp.mean, MATCH_LIMIT,
                  dict(sd=sp.sd, seeds=sp.n, floor=floor, differ_per_seed=differ, floor_per_seed=floor_n))


def accuracy_checks(seeds: list[dict]) -> list[Target]:
    """The three accuracy targets over the seeds (each seed: accuracy by variant, n_eval, label agreement)."""
    n = min((s.get("n_eval") or 0 for s in seeds), default=0)
    resolution = 100 / n if n else 0.0  # one eval sentence, in points
    out = []
    for other, limit, target, what in (
            ("torch-fp32", -FP32_GAP_LIMIT, f"deployed INT8 accuracy within {FP32_GAP_LIMIT} points of FP32",
             lambda v: f"ORT QAT INT8 {format_spread(spread(_accs(seeds, 'ort-qat-int8')))} vs FP32 "
                       f"{format_spread(spread(_accs(seeds, 'torch-fp32')))}; INT8 - FP32 per seed "
                       f"{verdict_text(v)} points (n_eval={n})"),
            ("ort-peer-int8", 0.0, "deployed INT8 accuracy not below the peer's beyond noise",
             lambda v: f"QAT INT8 - peer per seed {verdict_text(v)} points (noise: the sd over seeds, at least one "
                       f"sentence = {resolution:.2f} points; within noise is no loss beyond it)")):
        diffs = _paired(seeds, "ort-qat-int8", other)
        if diffs:
            v = verdict(diffs, limit, at_least=True, resolution=resolution)
            out.append(Target.judged(target, what(v), v, sd=v["sd"], seeds=v["n"]))
        else:
            out.append(Target.not_measured(target))
    return out + [match_check(seeds)]


def latency_checks(rows: list[dict]) -> list[Target]:
    """The two latency targets at batch 8 x 128, 1 thread; spreads decide "within noise"."""
    lat = {(r["variant"], r["threads"], r["batch"]): r for r in rows}
    base, peer = lat.get(("torch-fp32", 1, 8)), lat.get(("ort-peer-int8", 1, 8))
    best = min((lat[(v, 1, 8)] for v in dp.INT8_DEPLOY if (v, 1, 8) in lat), key=lambda r: r["p50_ms"], default=None)
    target = f"best INT8 deploy path <= {LATENCY_LIMIT:.2f}x PyTorch FP32 eager (batch 8 x 128, 1 thread)"
    faster = "best INT8 deploy path faster than the peer (ORT quantize_dynamic)"
    if not (base and best and peer):
        return [Target.not_measured(target), Target.not_measured(faster)]
    q = {name: (r["p10_ms"], r["p50_ms"], r["p90_ms"]) for name, r in (("best", best), ("base", base), ("peer", peer))}
    r = ratio_verdict(q["best"], q["base"], LATENCY_LIMIT, at_most=True)
    out = [Target.judged(target, f"{best['variant']} {best['p50_ms']:.1f} ms vs FP32 eager {base['p50_ms']:.1f} ms: "
                                 f"{r['ratio']:.2f}x (spread {r['ratio_low']:.2f}-{r['ratio_high']:.2f}x; peer "
                                 f"{peer['p50_ms'] / base['p50_ms']:.2f}x)", r)]
    overlap = best["p10_ms"] <= peer["p90_ms"] and peer["p10_ms"] <= best["p90_ms"]
    word = "within noise" if overlap else ("met" if best["p50_ms"] < peer["p50_ms"] else "missed")
    out.append(Target(faster, f"{best['variant']} p50 {best['p50_ms']:.1f} ms (p10-p90 {best['p10_ms']:.1f}-"
                              f"{best['p90_ms']:.1f}) vs peer p50 {peer['p50_ms']:.1f} ms ({peer['p10_ms']:.1f}-"
                              f"{peer['p90_ms']:.1f}): {'spreads overlap' if overlap else 'spreads apart'}", word,
                      best["p50_ms"] / peer["p50_ms"], 1.0))
    return out


def targets(result: dict) -> list[Target]:
    """Every deploy target from a result (seed_results by seed, latency rows, sizes)."""
    seeds = [result["seed_results"][k] for k in sorted(result.get("seed_results", {}), key=int)]
    sizes = seeds[0].get("sizes_mb", {}) if seeds else {}
    size = f"INT8 size <= {SIZE_LIMIT}x FP32, embeddings included"
    if "qat-int8" in sizes and "torch-fp32" in sizes:
        r = sizes["qat-int8"] / sizes["torch-fp32"]
        size_target = Target.exact(size, f"{sizes['qat-int8']:.1f} MB vs {sizes['torch-fp32']:.1f} MB: {r:.2f}x",
                                   r <= SIZE_LIMIT, r, SIZE_LIMIT)
    else:
        size_target = Target.not_measured(size)
    return latency_checks(result.get("latency", [])) + accuracy_checks(seeds) + [size_target]
