"""Trained models of a QAT run, saved as it goes, so `--resume` (or a later lesson) reloads them instead of training.

    runs/<run>/models/seed<k>/<stage>.safetensors   the float weights after that training stage (safetensors only)
    runs/<run>/models/seed<k>/<stage>.json          what they are: stage, seed, model, QAT layers, training info

Stages: "fp32", "fp32-extra" and "qat" (saved *before* `convert_qat`: fake-quantized layers keep float weights).
`load_trained` puts the weights back into a fresh copy of the base model (for "qat" after the same `prepare_qat`,
ready for `convert_qat` or export). Loading reads safetensors only: no pickle, no code runs on load. The JSON is
written last, so a stage whose JSON exists was saved whole.

`pipeline.trained_pair(cfg)` is the way to jump ahead: the FP32 and QAT models of a (quick) budget, trained once and kept in
the user cache (`cached_run(cfg)`, outside the repository: weights are never committed), loaded on every later call.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from labkit.quant.qat import prepare_qat, qat_state

STAGES = ("fp32", "fp32-extra", "qat")
FORMAT = "labkit-qat-trained-v1"


class SavedModelError(ValueError):
    """A trained model cannot be saved (not float weights) or loaded (missing, or not for this model)."""


def stage_files(run: str | os.PathLike, seed: int, stage: str) -> tuple[Path, Path]:
    """(weights .safetensors, description .json) of one seed's training stage in a run folder (or its result.json)."""
    if stage not in STAGES:
        raise SavedModelError(f"stage {stage!r} is not a training stage; use one of {', '.join(STAGES)}")
    folder = Path(run).parent if Path(run).suffix == ".json" else Path(run)
    folder = folder / "models" / f"seed{int(seed)}"
    return folder / f"{stage}.safetensors", folder / f"{stage}.json"


def saved_stages(run: str | os.PathLike, seed: int) -> list[str]:
    """The training stages of `seed` saved whole in the run folder, in training order."""
    return [s for s in STAGES if stage_files(run, seed, s)[1].is_file()]


def save_trained(run: str | os.PathLike, seed: int, stage: str, model: nn.Module, *,
                 info: dict | None = None, model_name: str | None = None) -> Path:
    """Save `model`'s float weights after training `stage` of `seed` into the run folder; returns the weights file.

    info: training facts to keep beside them (steps, train_loss, lr, device), returned by `trained_info`."""
    weights, described = stage_files(run, seed, stage)
    state = qat_state(model)
    if stage == "qat" and (state is None or state.converted):
        raise SavedModelError("stage 'qat' saves the model prepared for QAT (fake quantizers in, float weights), "
                              "after training and before convert_qat")
    tensors, aliases, seen = {}, {}, {}  # every entry of the state dict once; tied entries as aliases
    for name, t in model.state_dict(keep_vars=True).items():
        if type(t) not in (torch.Tensor, nn.Parameter):
            raise SavedModelError(f"{name} is a {type(t).__name__}, not a float tensor: save the trained model before "
                                  "convert_qat (its fake-quantized layers still hold float weights)")
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key], tensors[name] = name, t.detach().to("cpu").contiguous()
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(weights) + ".tmp", metadata={"labkit_format": FORMAT, "stage": stage, "seed": str(seed)})
    os.replace(str(weights) + ".tmp", weights)
    description = {"format": FORMAT, "stage": stage, "seed": int(seed), "model": model_name, "weights": weights.name,
                   "model_class": type(model).__name__, "aliases": aliases, "info": info or {},
                   "qat": None if state is None else {"layers": list(state.layers), "activations": state.activations,
                                                      "embeddings": list(state.embeddings)}}
    Path(str(described) + ".tmp").write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")
    os.replace(str(described) + ".tmp", described)
    return weights


def trained_info(run: str | os.PathLike, seed: int, stage: str) -> dict:
    """The description saved with a stage (stage, seed, model, qat layers, `info` as given to save_trained)."""
    described = stage_files(run, seed, stage)[1]
    if not described.is_file():
        raise SavedModelError(f"no saved {stage!r} model for seed {seed} in {described.parents[2]} (looked for "
                              f"{described}); saved stages: {saved_stages(run, seed) or 'none'}")
    return json.loads(described.read_text(encoding="utf-8"))


def load_trained(run: str | os.PathLike, seed: int, stage: str, base_model: nn.Module) -> nn.Module:
    """`base_model` (a fresh float model of the same architecture, changed in place and returned) with the weights
    saved after `stage` of `seed`; for "qat", prepared with the same fake quantizers, ready for `convert_qat`."""
    description, weights = trained_info(run, seed, stage), stage_files(run, seed, stage)[0]
    if description.get("format") != FORMAT:
        raise SavedModelError(f"{weights}: format {description.get('format')!r}, expected {FORMAT!r}")
    if qat_state(base_model) is not None:
        raise SavedModelError("base_model was already prepared for QAT; pass a fresh float model")
    tensors = load_file(str(weights))  # safetensors only: no pickle
    tensors.update({name: tensors[stored] for name, stored in description.get("aliases", {}).items()})
    if (qat := description.get("qat")) is not None:
        prepare_qat(base_model, qat["layers"], activations=qat["activations"], embeddings=bool(qat["embeddings"]))
        if qat_state(base_model).embeddings != qat["embeddings"]:
            raise SavedModelError(f"{weights}: the saved model fake-quantized embeddings {qat['embeddings']}, "
                                  f"this base model has {qat_state(base_model).embeddings}")
    try:
        base_model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise SavedModelError(f"{weights} does not fit this base model ({description.get('model')!r} saved it): "
                              f"{' '.join(str(err).split())[:600]}") from None
    return base_model.eval()


class SeedModels:
    """One seed's trained stages in a run folder, for the pipeline: `trained(stage, base, train_fn)` trains `base`
    (and saves it) or loads what an earlier attempt saved. `training` (what decides the weights: a QATBertConfig's
    model, data, steps, lr ...) is saved with each stage; a stage saved under other settings is refused."""

    KEYS = ("model", "dataset", "n_train", "max_length", "batch_size", "fp32_steps", "extra_steps", "lr", "extra_lr",
            "warmup_ratio", "activations", "embeddings", "seed", "data_dir")

    def __init__(self, run: str | os.PathLike | None, cfg):
        self.run, self.seed = run, cfg.seed
        self.training = {**{k: getattr(cfg, k) for k in self.KEYS}, "layers": repr(cfg.layers)}

    def trained(self, stage: str, base: nn.Module, train_fn) -> tuple[nn.Module, dict]:
        """(`base` trained by `train_fn(base) -> info`, info), or loaded into `base` when that stage was saved."""
        if self.run is not None and stage in saved_stages(self.run, self.seed):
            saved = trained_info(self.run, self.seed, stage).get("info", {})
            if saved.get("training") != self.training:
                diff = sorted(k for k in {*saved.get("training", {}), *self.training}
                              if saved.get("training", {}).get(k) != self.training.get(k))
                raise SavedModelError(f"--resume: the {stage!r} model saved for seed {self.seed} in {self.run} was "
                                      f"trained with other settings ({', '.join(diff)}); resume with the same "
                                      "arguments, or start a new run")
            return load_trained(self.run, self.seed, stage, base), {k: v for k, v in saved.items() if k != "training"}
        info = train_fn(base)
        if self.run is not None:
            save_trained(self.run, self.seed, stage, base, info={**info, "training": self.training},
                         model_name=self.training["model"])
        return base, info


def cached_run(cfg) -> Path:
    """The user-cache folder for the models trained with `cfg`'s training settings (a QATBertConfig): one folder per
    model and settings, named by their hash, so another budget never loads these weights."""
    from labkit.models import cache_dir

    training = SeedModels(None, cfg).training
    key = hashlib.sha256(json.dumps(training, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir() / "qat_bert" / f"{str(cfg.model).replace('/', '--')}-{key}"


__all__ = ["STAGES", "SavedModelError", "SeedModels", "cached_run", "load_trained", "save_trained", "saved_stages", "stage_files",
           "trained_info"]
