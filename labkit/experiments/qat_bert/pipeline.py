"""Notebook 01's experiment: FP32 fine-tune, then PTQ-dynamic, PTQ-static and QAT to INT8, measured side by side.

`run_qat_bert` runs the stages in order (a tqdm bar): fine-tune in FP32 ("fp32"), the same extra steps in FP32
("fp32-extra", QAT's reference), PTQ dynamic and static (calibrated on training batches), QAT (prepare, train the
extra steps, convert); then accuracy and F1 on one eval set, size on disk and CPU latency at batch 1 and 8, length
128, eager and torch.compile'd (rounds interleaved across variants). Every INT8 variant quantizes the same layers
(the encoder and pooler Linears; the 2-way head stays FP32) and the embeddings, so sizes count every weight. A CPU
experiment by design: only the training may run on a GPU (`train_device`, "auto" in the full profile).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from labkit.data import load_text_classification, tokenize_classification
from labkit.experiments import protocol
from labkit.experiments.protocol import flag, seed_list
from labkit.experiments.qat_bert.saved_models import SeedModels
from labkit.measure.timing import interleaved_latency, time_callable
from labkit.metrics import classification_metrics
from labkit.models import load_classifier
from labkit.quant.io import round_trip_check
from labkit.quant.kernel_evidence import matmul_evidence
from labkit.quant.legacy import (
    legacy_convert,
    legacy_prepare_qat,
    legacy_quantized_modules,
    legacy_size_mb,
    naive_mistakes,
)
from labkit.quant.ptq import (
    quantize_dynamic_int8,
    quantize_embeddings_int8,
    quantize_static_int8,
    quantize_weight_only_int8,
)
from labkit.quant.qat import convert_qat, prepare_qat
from labkit.quant.report import int8_modules
from labkit.quant.selection import LayerSelection, resolve_layers
from labkit.quant.size import size_on_disk_mb

DATASETS = {"sst2": ("train", "validation"), "imdb": ("train", "test")}
VARIANTS = ("fp32", "fp32-extra", "ptq-dynamic", "ptq-static", "qat")
LABELS = {
    "fp32": "FP32 (fine-tuned)",
    "fp32-extra": "FP32 + extra steps",
    "ptq-dynamic": "PTQ dynamic INT8",
    "ptq-static": "PTQ static INT8",
    "qat": "QAT INT8",
}
FP32_VARIANTS = ("fp32", "fp32-extra")


@dataclass
class QATBertConfig(protocol.Settings):
    """Everything that decides what the experiment measures (the settings of `bench qat`, whose flags are the
    fields given a help text); `for_profile` gives the quick/full presets."""

    profile: str = "quick"
    dataset: str = flag("sst2", "sst2 (default) or imdb", choices=tuple(DATASETS))
    model: str = flag("minilm-l6", "classifier name (labkit.models) or hub id")
    n_train: int | None = flag(384, "training rows (default: the profile's)")
    n_eval: int | None = flag(200, "eval rows (default: the profile's; full = all)")
    max_length: int = 128
    batch_size: int = 16
    fp32_steps: int = flag(40, "FP32 fine-tuning steps")
    extra_steps: int = flag(16, "QAT steps = the FP32 reference's extra steps")
    lr: float = flag(1e-4, "FP32 fine-tuning learning rate (full: 5e-5)")
    extra_lr: float = flag(3e-5, "QAT / FP32-extra learning rate (full: 2e-5)")
    warmup_ratio: float = 0.1
    calibration_batches: int = 4
    layers: LayerSelection = r"^bert\.(encoder|pooler)\."
    embeddings: bool = True
    activations: str | None = "int8-dynamic"
    latency_batch_sizes: tuple[int, ...] = (1, 8)
    latency_seq_len: int = 128
    latency_rounds: int = 2
    latency_repeat: int = 2
    latency_warmup: int = 1
    compile: bool = flag(True, "skip the torch.compile latency")
    compile_variants: tuple[str, ...] | None = None  # None: every variant
    seed: int = 0
    data_dir: str | None = None
    seeds: tuple[int, ...] = flag((0,), "comma-separated seeds (full: 0,1,2; quick: 0): accuracy over these seeds "
                                        "(mean +- sd), latency on the first only", parse=seed_list)
    fp32_epochs: float | None = flag(None, "FP32 fine-tuning epochs over the training rows (full: 3; "
                                           "--fp32-steps wins)")
    extra_epochs: float | None = flag(None, "QAT (and FP32 + extra) epochs (full: 1; --extra-steps wins)")
    train_device: str = flag("cpu", "where training runs (full: auto = a GPU when visible); everything else runs "
                                    "on the CPU", choices=("cpu", "cuda", "auto"))
    threads: int | None = flag(None, "torch threads (default: torch's choice)")
    latency: bool = True  # False: skip the latency stages (seeds after the first)

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> QATBertConfig:
        """quick: CI-sized (a few hundred examples, a few dozen steps, one seed).

        full: trained to convergence, as published fine-tunes of 6-layer MiniLM reach ~91% on SST-2 dev: every one
        of the 67,349 training sentences, 3 epochs of batch 32 at lr 5e-5 (6,315 FP32 steps, linear decay, 6%
        warm-up), then 1 more epoch (2,105 steps, lr 2e-5) for QAT and for the FP32 reference alike; the whole dev
        set (872); 3 seeds (accuracy as mean +- sd); training on a GPU when one is visible.
        full with dataset="imdb": a small-budget IMDB recipe, 1,000 train / 1,000 test reviews (2 epochs).
        Explicit fp32_steps / extra_steps overrides win over the epochs."""
        from labkit.env import get_profile

        profile = profile or get_profile()
        if profile == "quick":
            base = cls(profile="quick", compile_variants=("fp32", "qat"))
        elif profile == "full":
            base = cls(
                profile="full", n_train=None, n_eval=None, batch_size=32, fp32_steps=6315, extra_steps=2105,
                fp32_epochs=3.0, extra_epochs=1.0, lr=5e-5, extra_lr=2e-5, warmup_ratio=0.06, seeds=(0, 1, 2),
                train_device="auto", calibration_batches=16, latency_rounds=4, latency_repeat=3, latency_warmup=2,
            )
        else:
            raise ValueError(f"profile {profile!r} is not a profile; use 'quick' or 'full'")
        if overrides.get("dataset") == "imdb" and profile == "full":  # small-budget IMDB recipe
            base = replace(base, n_train=1000, n_eval=1000, fp32_steps=64, extra_steps=64, fp32_epochs=None,
                           extra_epochs=None)
        if "fp32_steps" in overrides:
            base = replace(base, fp32_epochs=None)
        if "extra_steps" in overrides:
            base = replace(base, extra_epochs=None)
        return replace(base, **overrides)

    def steps_for(self, n_train_rows: int) -> tuple[int, int]:
        """(fp32_steps, extra_steps): from the epochs over `n_train_rows` where they are set, else as configured."""
        per_epoch = math.ceil(n_train_rows / self.batch_size)
        fp32 = self.fp32_steps if self.fp32_epochs is None else max(1, round(self.fp32_epochs * per_epoch))
        extra = self.extra_steps if self.extra_epochs is None else max(1, round(self.extra_epochs * per_epoch))
        return fp32, extra

    def resolved_train_device(self) -> str:
        """"cuda" or "cpu": where training runs ("auto" is cuda when a GPU is visible)."""
        return ("cuda" if torch.cuda.is_available() else "cpu") if self.train_device == "auto" else self.train_device

    def device_slug(self) -> str:
        return "cpu"  # a CPU experiment by design: only the training may run on a GPU

    def validate(self) -> None:
        """Fail early, before anything heavy loads, on inputs that cannot work."""
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r} for notebook 01; choose one of {', '.join(DATASETS)}")
        for name in ("fp32_steps", "extra_steps", "batch_size", "latency_rounds", "latency_repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if unknown := set(self.compile_variants or ()) - set(VARIANTS):
            raise ValueError(f"compile_variants has unknown variant(s) {sorted(unknown)}; known: {VARIANTS}")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed, e.g. (0, 1, 2)")
        for name in ("fp32_epochs", "extra_epochs"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0 (or None to use the step count), got {getattr(self, name)}")
        if self.train_device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"train_device={self.train_device!r} is not a device; use 'cpu', 'cuda' or 'auto'")
        if self.train_device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train_device='cuda' but no CUDA GPU is visible; use 'cpu' or 'auto'")


@dataclass
class QATBertResult:
    """What a run measured: one row per variant plus checks, with the config that produced it."""

    config: dict
    rows: list[dict]
    round_trip: dict = field(default_factory=dict)
    int8_modules: dict[str, list[str]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    threads: int = 1
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # only with keep_models=True
    tokenizer: object = field(default=None, repr=False)
    eval_ds: object = field(default=None, repr=False)
    train_ds: object = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------- data


def load_data(cfg: QATBertConfig, tokenizer):
    """(train, eval) tokenised datasets: `n_train` shuffled training rows, `n_eval` eval rows (None = all)."""
    train_split, eval_split = DATASETS[cfg.dataset]
    train = load_text_classification(cfg.dataset, train_split, n=cfg.n_train, seed=cfg.seed, data_dir=cfg.data_dir)
    evalset = load_text_classification(cfg.dataset, eval_split, n=cfg.n_eval, seed=cfg.seed, data_dir=cfg.data_dir)
    return (tokenize_classification(train, tokenizer, cfg.max_length),
            tokenize_classification(evalset, tokenizer, cfg.max_length))


def _collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def batches(ds, tokenizer, batch_size: int, limit: int | None = None, shuffle_seed: int | None = None):
    """Padded batches (dicts of tensors, labels removed) from a tokenised dataset."""
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    collate = _collator(tokenizer)
    n = len(ds) if limit is None else min(len(ds), limit * batch_size)
    for start in range(0, n, batch_size):
        rows = [ds[i] for i in range(start, min(start + batch_size, n))]
        batch = collate(rows)
        batch.pop("labels", None)
        batch.pop("label", None)
        yield dict(batch)


# ------------------------------------------------------------------------------------------- training


def train(model: nn.Module, train_ds, tokenizer, cfg: QATBertConfig, steps: int, lr: float, run_name: str):
    """Train `model` in place for `steps` optimizer steps with the HF Trainer (AdamW, linear decay, warm-up), on
    `cfg.train_device`; the model is back on the CPU afterwards."""
    from transformers import Trainer, TrainingArguments

    device = cfg.resolved_train_device()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, run_name=run_name, max_steps=steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=lr, warmup_steps=int(cfg.warmup_ratio * steps), weight_decay=0.01, lr_scheduler_type="linear",
            logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], seed=cfg.seed,
            data_seed=cfg.seed, dataloader_num_workers=0, use_cpu=device == "cpu",
            disable_tqdm=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=_collator(tokenizer))
        output = trainer.train()
    model.to("cpu").eval()
    return {"steps": steps, "train_loss": float(output.training_loss), "lr": lr, "device": device}


@torch.inference_mode()
def evaluate(model: nn.Module, eval_ds, tokenizer, batch_size: int = 32, desc: str = "eval") -> dict:
    """Accuracy and F1 (through `evaluate`) of `model` on `eval_ds`, dynamic padding."""
    model.eval()
    device = next(model.parameters()).device
    preds: list[int] = []
    n_batches = (len(eval_ds) + batch_size - 1) // batch_size
    for batch in tqdm(batches(eval_ds, tokenizer, batch_size), total=n_batches, desc=desc, leave=True):
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        preds += logits.argmax(-1).tolist()
    return classification_metrics(preds, eval_ds["label"])


# ------------------------------------------------------------------------------------------ quantize


def make_ptq(fp32: nn.Module, cfg: QATBertConfig, calibration: list[dict] | None = None) -> nn.Module:
    """A copy of `fp32` with INT8 Linear layers (and INT8 embeddings): dynamic per-token activations (weight-only
    when `cfg.activations` is None), or static ones calibrated on `calibration` batches."""
    model = copy.deepcopy(fp32).eval()
    if calibration is not None:
        quantize_static_int8(model, cfg.layers, calibration)
    else:
        (quantize_weight_only_int8 if cfg.activations is None else quantize_dynamic_int8)(model, cfg.layers)
    return quantize_embeddings_int8(model) if cfg.embeddings else model


def make_qat(fp32: nn.Module, cfg: QATBertConfig, train_ds, tokenizer, store=None) -> tuple[nn.Module, dict]:
    """A copy of `fp32`, prepared with fake quantizers, trained `extra_steps`, converted to real INT8. `store`: a
    `saved_models.SeedModels` that saves the trained QAT model (before convert), or loads it when it was saved."""
    def train_qat(model: nn.Module) -> dict:
        prepare_qat(model.train(), cfg.layers, activations=cfg.activations, embeddings=cfg.embeddings)
        return train(model, train_ds, tokenizer, cfg, cfg.extra_steps, cfg.extra_lr, "qat")

    model, info = (store or SeedModels(None, cfg)).trained("qat", copy.deepcopy(fp32), train_qat)
    return convert_qat(model).eval(), info


# ------------------------------------------------------------------------------------------- latency


def latency_inputs(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-length batch (every position a real token), so every variant does the same work."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def compile_settings():
    """Inductor freezing for every compiled variant alike (compile, warm up and run inside it): weights become
    constants, so on x86 the FP32 Linears use packed MKL GEMMs and torchao's INT8 pattern is lowered to oneDNN's
    qlinear kernel. (Set as a config patch around compilation: passing `options={"freezing": True}` to
    torch.compile did not trigger the oneDNN INT8 lowering in torch 2.13, only the plain `_int_mm` path.)"""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    stack = contextlib.ExitStack()
    stack.enter_context(inductor_config.patch(freezing=True))
    # every variant x batch size is one more compiled entry of the same forward(); past dynamo's default
    # limit (8) the extra ones would silently run eager, so raise it for this measurement
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    stack.enter_context(dynamo_config.patch(**{limit: 64}))
    return stack


def measure_latency(models: dict[str, nn.Module], cfg: QATBertConfig, vocab_size: int, compiled: bool = False,
                    progress: tqdm | None = None, modes: dict[str, str] | None = None) -> dict[str, dict[int, dict]]:
    """p10/p50/p90 latency (ms) per variant and batch size, rounds interleaved across variants
    (labkit.measure.timing.interleaved_latency); warm-up (and, compiled, the compilation) before any timed call.

    `modes` (variant -> "w8a8" / "w8" / "float"): one call per variant at the largest batch is then profiled and
    judged (labkit.quant.kernel_evidence); the evidence is in that batch's entry under "matmul"."""
    inputs = {b: latency_inputs(b, cfg.latency_seq_len, vocab_size, cfg.seed) for b in cfg.latency_batch_sizes}
    what = "compiled" if compiled else "eager"
    if compiled:
        torch._dynamo.reset()
    with torch.inference_mode(), compile_settings() if compiled else contextlib.nullcontext():
        fns = {name: (torch.compile(m) if compiled else m) for name, m in models.items()}
        out = interleaved_latency({n: (lambda x, f=f: f(**x)) for n, f in fns.items()}, inputs,
                                  rounds=cfg.latency_rounds, repeat=cfg.latency_repeat, warmup=cfg.latency_warmup,
                                  on_round=lambda r: progress and progress.set_postfix_str(
                                      f"{what} round {r + 1}/{cfg.latency_rounds}"))
        b_max = max(inputs)
        for name, fn in fns.items():
            if modes and name in modes:
                ev = matmul_evidence(models[name], lambda fn=fn: fn(**inputs[b_max]), modes[name])
                out[name][b_max]["matmul"] = ev.as_dict() | {"summary": str(ev)}
    del fns
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------- the run


def variant_mode(variant: str, cfg: QATBertConfig) -> str:
    """What a variant claims to compute with: "float", "w8a8" (INT8 activations, dynamic or static) or "w8"."""
    if variant in FP32_VARIANTS:
        return "float"
    if variant == "ptq-static":
        return "w8a8"
    return "w8" if cfg.activations is None else "w8a8"


def run_qat_bert(cfg: QATBertConfig | None = None, progress: bool = True, keep_models: bool = False,
                 on_stage=None, models_dir=None) -> QATBertResult:
    """Run the whole comparison and return one row per variant (see the module docstring); with
    `keep_models` the result also holds the five models, the tokenizer and the datasets. `on_stage(stage, seconds)`
    is called as each stage finishes (the benchmark logs them as it goes). `models_dir`: a run folder; each
    training stage's model is saved there as it finishes (`saved_models`), and a stage already saved there is
    loaded instead of trained (how `--resume` skips the training an interrupted run finished)."""
    cfg = cfg or QATBertConfig.for_profile("quick")
    cfg.validate()
    torch.manual_seed(cfg.seed)
    stages = ["load", "fine-tune FP32", "FP32 extra steps", "PTQ dynamic", "PTQ static", "QAT", "evaluate",
              "size + save/load"] + (["latency eager"] if cfg.latency else []) \
        + (["latency compiled"] if cfg.compile and cfg.latency else [])
    bar = tqdm(total=len(stages), desc="notebook 01 pipeline", disable=not progress)
    seconds: dict[str, float] = {}
    t_stage = [time.perf_counter()]

    def done(stage: str) -> None:
        now = time.perf_counter()
        seconds[stage] = round(now - t_stage[0], 1)
        t_stage[0] = now
        if on_stage is not None:
            on_stage(stage, seconds[stage])
        bar.update(1)
        bar.set_postfix_str(stage)

    model, tokenizer = load_classifier(cfg.model, num_labels=2, device="cpu")
    resolve_layers(model, cfg.layers)  # a selection that matches nothing fails here, before any training
    train_ds, eval_ds = load_data(cfg, tokenizer)
    fp32_steps, extra_steps = cfg.steps_for(len(train_ds))
    cfg = replace(cfg, fp32_steps=fp32_steps, extra_steps=extra_steps)
    vocab_size = model.config.vocab_size
    done("load")

    store = SeedModels(models_dir, cfg)
    model, fp32_info = store.trained("fp32", model,
                                     lambda m: train(m, train_ds, tokenizer, cfg, cfg.fp32_steps, cfg.lr, "fp32"))
    models: dict[str, nn.Module] = {"fp32": model}
    info: dict[str, dict] = {"fp32": fp32_info}
    done("fine-tune FP32")

    extra, info["fp32-extra"] = store.trained(
        "fp32-extra", copy.deepcopy(model).train(),
        lambda m: train(m, train_ds, tokenizer, cfg, cfg.extra_steps, cfg.extra_lr, "fp32-extra"))
    info["fp32-extra"]["steps"] += cfg.fp32_steps
    models["fp32-extra"] = extra
    done("FP32 extra steps")

    models["ptq-dynamic"] = make_ptq(model, cfg)
    info["ptq-dynamic"] = {"steps": cfg.fp32_steps}
    done("PTQ dynamic")
    models["ptq-static"] = make_ptq(model, cfg, list(batches(train_ds, tokenizer, cfg.batch_size,
                                                             limit=cfg.calibration_batches, shuffle_seed=cfg.seed + 1)))
    info["ptq-static"] = {"steps": cfg.fp32_steps, "calibration_batches": cfg.calibration_batches}
    done("PTQ static")
    models["qat"], info["qat"] = make_qat(model, cfg, train_ds, tokenizer, store)
    info["qat"]["steps"] += cfg.fp32_steps
    done("QAT")

    metrics = {name: evaluate(m, eval_ds, tokenizer, desc=f"eval {name}") for name, m in models.items()}
    done("evaluate")

    sizes = {name: size_on_disk_mb(m) for name, m in models.items()}
    q_names = {name: int8_modules(m) for name, m in models.items()}
    def factory() -> nn.Module:
        return load_classifier(cfg.model, num_labels=2, device="cpu")[0]

    sample = next(batches(eval_ds, tokenizer, 16))
    with tempfile.TemporaryDirectory() as tmp:
        round_trip = round_trip_check(models["qat"], f"{tmp}/qat", factory, sample)
    round_trip.pop("file", None)
    done("size + save/load")

    modes = {name: variant_mode(name, cfg) for name in models}
    eager: dict = {name: {} for name in models}
    if cfg.latency:
        eager = measure_latency(models, cfg, vocab_size, compiled=False, progress=bar, modes=modes)
        done("latency eager")
    compiled: dict = {}
    if cfg.compile and cfg.latency:
        chosen = {n: m for n, m in models.items() if cfg.compile_variants is None or n in cfg.compile_variants}
        compiled = measure_latency(chosen, cfg, vocab_size, compiled=True, progress=bar, modes=modes)
        done("latency compiled")
    bar.close()

    rows = []
    for name in VARIANTS:
        row = {
            "variant": name, "label": LABELS[name],
            "accuracy": metrics[name]["accuracy"], "f1": metrics[name]["f1"],
            "size_mb": sizes[name], "int8_modules": len(q_names[name]),
            "train_steps": info[name].get("steps"), "train_loss": info[name].get("train_loss"),
        }
        for b in cfg.latency_batch_sizes:
            e, c = eager[name].get(b), compiled.get(name, {}).get(b)
            row[f"latency_b{b}_repeats"] = e["n"] if e else None
            for key, entry in ((f"latency_ms_b{b}", e), (f"latency_ms_b{b}_compiled", c)):
                row.update({key + suffix: entry[q] if entry else None
                            for suffix, q in (("", "p50_ms"), ("_p10", "p10_ms"), ("_p90", "p90_ms"))})
            if c:
                row["compile_warmup_s"] = round(c["warmup_s"], 1)
            for kind, entry in (("eager", e), ("compiled", c)):
                if entry and "matmul" in entry:
                    row.update({f"matmul_{kind}": entry["matmul"]["summary"], f"matmul_{kind}_ok": entry["matmul"]["ok"]})
        rows.append(row)
    config = asdict(cfg)
    config["layers"] = cfg.layers if isinstance(cfg.layers, (str, list, tuple, type(None))) else repr(cfg.layers)
    config["n_train_actual"], config["n_eval_actual"] = len(train_ds), len(eval_ds)
    config["eval_source"] = eval_ds.info.description or ""
    result = QATBertResult(config=config, rows=rows, round_trip=round_trip, int8_modules=q_names,
                           stage_seconds=seconds, threads=torch.get_num_threads())
    if keep_models:
        result.models, result.tokenizer, result.eval_ds, result.train_ds = models, tokenizer, eval_ds, train_ds
    return result


# ------------------------------------------------------------------------------------------- reading rows


def variant_row(rows: list[dict], variant: str) -> dict:
    for r in rows:
        if r["variant"] == variant:
            return r
    raise KeyError(f"no row for variant {variant!r}; rows have {[r['variant'] for r in rows]}")


def accuracy_changes(rows: list[dict]) -> list[dict]:
    """Accuracy/F1 change (points) of each INT8 variant against the FP32 model with the same training:
    PTQ against the first FP32 model, QAT against FP32 + extra steps."""
    out = []
    for variant, ref in (("ptq-dynamic", "fp32"), ("ptq-static", "fp32"), ("qat", "fp32-extra")):
        r, f = variant_row(rows, variant), variant_row(rows, ref)
        out.append({"variant": r["label"], "against": f["label"],
                    "accuracy change (points)": (r["accuracy"] - f["accuracy"]) * 100,
                    "F1 change (points)": (r["f1"] - f["f1"]) * 100})
    return out


def results_frame(rows: list[dict]):
    """The results table as a pandas DataFrame (accuracy and F1 in %, one row per variant)."""
    import pandas as pd

    cols = ["label", "accuracy", "f1", "size_mb", "latency_ms_b1", "latency_ms_b8", "latency_ms_b1_compiled",
            "latency_ms_b8_compiled", "train_steps", "int8_modules"]
    df = pd.DataFrame(rows)
    df = df[[c for c in cols if c in df.columns]].copy()
    df["accuracy"] *= 100
    df["f1"] *= 100
    return df.rename(columns={"label": "variant", "accuracy": "accuracy %", "f1": "F1 %", "size_mb": "size MB",
                              "latency_ms_b1": "b1 eager ms", "latency_ms_b8": "b8 eager ms",
                              "latency_ms_b1_compiled": "b1 compiled ms", "latency_ms_b8_compiled": "b8 compiled ms",
                              "train_steps": "train steps", "int8_modules": "INT8 modules"}).set_index("variant")


# ------------------------------------------------------------------------------------------- legacy


def run_legacy(result: QATBertResult, steps: int | None = None) -> dict:
    """The deprecated torch.ao.quantization eager-mode QAT recipe on the same FP32 model, layers, data and
    extra steps (needs `run_qat_bert(..., keep_models=True)`), plus the naive mistakes, measured."""
    if "fp32" not in result.models:
        raise ValueError("run_legacy needs the models: call run_qat_bert(cfg, keep_models=True) first")
    cfg = QATBertConfig(**{k: v for k, v in result.config.items() if k in QATBertConfig.__dataclass_fields__})
    cfg.latency_batch_sizes = tuple(cfg.latency_batch_sizes)
    steps = steps or cfg.extra_steps
    fp32 = result.models["fp32"]
    sample = next(batches(result.eval_ds, result.tokenizer, 8))
    mistakes = naive_mistakes(fp32, sample, cfg.layers)
    model = legacy_prepare_qat(copy.deepcopy(fp32), cfg.layers)
    info = train(model, result.train_ds, result.tokenizer, cfg, steps, cfg.extra_lr, "legacy-qat")
    legacy_convert(model)
    metrics = evaluate(model, result.eval_ds, result.tokenizer, desc="eval legacy")
    x = latency_inputs(8, cfg.latency_seq_len, fp32.config.vocab_size, cfg.seed)
    lat = time_callable(lambda: model(**x), warmup=cfg.latency_warmup,
                        repeat=cfg.latency_rounds * cfg.latency_repeat)
    lat_fp32 = time_callable(lambda: fp32(**x), warmup=cfg.latency_warmup,
                             repeat=cfg.latency_rounds * cfg.latency_repeat)
    return {
        "row": {"variant": "legacy-qat", "label": "legacy eager QAT (torch.ao)", **metrics,
                "size_mb": legacy_size_mb(model), "quantized_modules": len(legacy_quantized_modules(model)),
                "train_steps": cfg.fp32_steps + info["steps"], "latency_ms_b8": lat.median_ms,
                "fp32_latency_ms_b8_same_session": lat_fp32.median_ms},
        "mistakes": mistakes,
    }


def trained_pair(cfg, *, cache: bool = True) -> dict:
    """The FP32 fine-tune and the converted QAT INT8 model of `cfg` (a QATBertConfig, seed `cfg.seed`), trained
    as notebook 01's recipe trains them, or loaded from the user cache where an earlier call (a lesson, its
    solutions, a test) saved them. Returns fp32, qat (on the CPU), tokenizer, eval_ds and info (`from_cache`, the
    folder, seconds). cache=False trains and keeps nothing."""
    t0 = time.perf_counter()
    from labkit.experiments.qat_bert.saved_models import cached_run, saved_stages
    torch.manual_seed(cfg.seed)  # the new 2-way head is initialised at random
    fp32, tokenizer = load_classifier(cfg.model, num_labels=2, device="cpu")
    train_ds, eval_ds = load_data(cfg, tokenizer)
    cfg = replace(cfg, **dict(zip(("fp32_steps", "extra_steps"), cfg.steps_for(len(train_ds)))))
    run = cached_run(cfg) if cache else None
    from_cache = run is not None and {"fp32", "qat"} <= set(saved_stages(run, cfg.seed))
    store = SeedModels(run, cfg)
    fp32, fp32_info = store.trained("fp32", fp32, lambda m: train(m, train_ds, tokenizer, cfg, cfg.fp32_steps,
                                                                   cfg.lr, "fp32"))
    qat, qat_info = make_qat(fp32, cfg, train_ds, tokenizer, store=store)  # a prepared copy: fp32 stays
    info = {"fp32": fp32_info, "qat": qat_info, "from_cache": from_cache, "folder": None if run is None else str(run),
            "seconds": round(time.perf_counter() - t0, 1), "n_train": len(train_ds), "n_eval": len(eval_ds)}
    return {"fp32": fp32.eval(), "qat": qat.eval(), "tokenizer": tokenizer, "eval_ds": eval_ds, "info": info}



