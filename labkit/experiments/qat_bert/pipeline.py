"""Notebook 01's experiment: FP32 fine-tune, then PTQ-dynamic, PTQ-static and QAT to INT8, measured side by side.

Stages (each one a function, `run_qat_bert` runs them in order with a tqdm bar):
    1. fine-tune the classifier in FP32 with the HF Trainer                       -> "fp32"
    2. continue FP32 training for the QAT budget (same steps, data, schedule)    -> "fp32-extra"
    3. PTQ: dynamic INT8 (per-token activations) on the FP32 model                -> "ptq-dynamic"
    4. PTQ: static INT8, activation ranges calibrated on training batches        -> "ptq-static"
    5. QAT: prepare (fake quant) the FP32 model, train the same extra steps, convert -> "qat"
    6. each variant: accuracy and F1 on the same eval set, size on disk, CPU latency at batch 1 and 8,
       sequence length 128, eager and torch.compile'd (timing rounds interleaved across variants)
All INT8 variants quantize the same layers (default: every Linear in the encoder and pooler, the 2-way
classifier head stays FP32) and the embeddings (INT8 weight-only), so sizes count every weight.
This is a CPU experiment by design (the deployment target is a CPU): quantization, evaluation and latency run on
the CPU even where a GPU is visible. Only the training may run on a GPU (`train_device`, "auto" in the full
profile), which the full budget (3 epochs of the 67k SST-2 training sentences, 3 seeds) needs in practice.
The same labkit.quant API runs on GPUs in bf16 (notebook 03).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from labkit.data import load_text_classification, tokenize_classification
from labkit.experiments.qat_bert.latency import measure_latency
from labkit.metrics import classification_metrics
from labkit.models import load_classifier
from labkit.quant.io import round_trip_check
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
class QATBertConfig:
    """Everything that decides what the experiment measures; `for_profile` gives the quick/full presets."""

    profile: str = "quick"
    dataset: str = "sst2"
    model: str = "minilm-l6"
    n_train: int | None = 384
    n_eval: int | None = 200
    max_length: int = 128
    batch_size: int = 16
    fp32_steps: int = 40
    extra_steps: int = 16  # QAT steps, and the FP32 reference's extra steps
    lr: float = 1e-4
    extra_lr: float = 3e-5
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
    compile: bool = True
    compile_variants: tuple[str, ...] | None = None  # None: every variant
    seed: int = 0
    data_dir: str | None = None
    seeds: tuple[int, ...] = (0,)  # run_seeds: accuracy over these seeds (mean +- sd), latency on the first only
    fp32_epochs: float | None = None  # set: fp32_steps = epochs over the training rows (after loading them)
    extra_epochs: float | None = None  # set: extra_steps likewise
    train_device: str = "cpu"  # "cpu", "cuda" or "auto" (cuda when visible): where training runs, nothing else
    latency: bool = True  # False: skip the latency stages (seeds after the first)

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> QATBertConfig:
        """quick: CI-sized (a few hundred examples, a few dozen steps, one seed).

        full: trained to convergence, as published fine-tunes of 6-layer MiniLM reach ~91% on SST-2 dev: every one
        of the 67,349 training sentences, 3 epochs of batch 32 at lr 5e-5 (6,315 FP32 steps, linear decay, 6%
        warm-up), then 1 more epoch (2,105 steps, lr 2e-5) for QAT and for the FP32 reference alike; the whole dev
        set (872); 3 seeds (accuracy as mean +- sd); training on a GPU when one is visible.
        full with dataset="imdb": a small-budget IMDB recipe, 1,000 train / 1,000 test reviews (2 epochs).
        Explicit fp32_steps / extra_steps overrides win over the epochs."""
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
        if self.train_device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.train_device

    def validate(self) -> None:
        """Fail early, before anything heavy loads, on inputs that cannot work."""
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r} for notebook 01; choose one of {', '.join(DATASETS)}"
            )
        for name in ("fp32_steps", "extra_steps", "batch_size", "latency_rounds", "latency_repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        unknown = set(self.compile_variants or ()) - set(VARIANTS)
        if unknown:
            raise ValueError(f"compile_variants has unknown variant(s) {sorted(unknown)}; known: {VARIANTS}")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed, e.g. (0, 1, 2)")
        for name in ("fp32_epochs", "extra_epochs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be above 0 (or None to use the step count), got {value}")
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

    def as_dict(self) -> dict:
        """The measured results (no models), JSON-ready."""
        return {k: v for k, v in asdict(replace(self, models={}, tokenizer=None, eval_ds=None, train_ds=None)).items()
                if k not in ("models", "tokenizer", "eval_ds", "train_ds")}


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


def make_ptq_dynamic(fp32: nn.Module, cfg: QATBertConfig) -> nn.Module:
    """A copy of `fp32` with dynamic INT8 Linear layers (and INT8 embeddings)."""
    model = copy.deepcopy(fp32).eval()
    if cfg.activations is None:
        quantize_weight_only_int8(model, cfg.layers)
    else:
        quantize_dynamic_int8(model, cfg.layers)
    if cfg.embeddings:
        quantize_embeddings_int8(model)
    return model


def make_ptq_static(fp32: nn.Module, cfg: QATBertConfig, train_ds, tokenizer) -> nn.Module:
    """A copy of `fp32` with static INT8 Linear layers calibrated on training batches (and INT8 embeddings)."""
    model = copy.deepcopy(fp32).eval()
    calib = list(batches(train_ds, tokenizer, cfg.batch_size, limit=cfg.calibration_batches, shuffle_seed=cfg.seed + 1))
    quantize_static_int8(model, cfg.layers, calib)
    if cfg.embeddings:
        quantize_embeddings_int8(model)
    return model


def make_qat(fp32: nn.Module, cfg: QATBertConfig, train_ds, tokenizer, store=None) -> tuple[nn.Module, dict]:
    """A copy of `fp32`, prepared with fake quantizers, trained `extra_steps`, converted to real INT8.

    store: a `saved_models.SeedModels`; the trained QAT model (before convert) is saved there, or loaded from it
    instead of training when an earlier attempt saved it."""
    saved = store.load("qat", copy.deepcopy(fp32)) if store is not None else None
    if saved is not None:
        model, info = saved
    else:
        model = copy.deepcopy(fp32).train()
        prepare_qat(model, cfg.layers, activations=cfg.activations, embeddings=cfg.embeddings)
        info = train(model, train_ds, tokenizer, cfg, cfg.extra_steps, cfg.extra_lr, "qat")
        if store is not None:
            store.save("qat", model, info)
    convert_qat(model)
    return model.eval(), info



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
    from labkit.experiments.qat_bert.saved_models import SeedModels, trained_or_loaded, training_settings

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

    store = SeedModels(models_dir, cfg.seed, training_settings(cfg)) if models_dir is not None else None
    model, fp32_info = trained_or_loaded(store, "fp32", model,
                                         lambda m: train(m, train_ds, tokenizer, cfg, cfg.fp32_steps, cfg.lr, "fp32"))
    models: dict[str, nn.Module] = {"fp32": model}
    info: dict[str, dict] = {"fp32": fp32_info}
    done("fine-tune FP32")

    extra, info["fp32-extra"] = trained_or_loaded(
        store, "fp32-extra", copy.deepcopy(model).train(),
        lambda m: train(m, train_ds, tokenizer, cfg, cfg.extra_steps, cfg.extra_lr, "fp32-extra"))
    info["fp32-extra"]["steps"] += cfg.fp32_steps
    models["fp32-extra"] = extra
    done("FP32 extra steps")

    models["ptq-dynamic"] = make_ptq_dynamic(model, cfg)
    info["ptq-dynamic"] = {"steps": cfg.fp32_steps}
    done("PTQ dynamic")
    models["ptq-static"] = make_ptq_static(model, cfg, train_ds, tokenizer)
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
            e = eager[name].get(b)
            row[f"latency_ms_b{b}"] = e["median_ms"] if e else None
            row[f"latency_ms_b{b}_p10"] = e["p10_ms"] if e else None
            row[f"latency_ms_b{b}_p90"] = e["p90_ms"] if e else None
            row[f"latency_b{b}_repeats"] = e["n"] if e else None
            c = compiled.get(name, {}).get(b)
            row[f"latency_ms_b{b}_compiled"] = c["median_ms"] if c else None
            row[f"latency_ms_b{b}_compiled_p10"] = c["p10_ms"] if c else None
            row[f"latency_ms_b{b}_compiled_p90"] = c["p90_ms"] if c else None
            if c:
                row["compile_warmup_s"] = round(c["warmup_s"], 1)
            for kind, entry in (("eager", e), ("compiled", c)):
                if entry and "matmul" in entry:
                    row[f"matmul_{kind}"] = entry["matmul"]["summary"]
                    row[f"matmul_{kind}_ok"] = entry["matmul"]["ok"]
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
