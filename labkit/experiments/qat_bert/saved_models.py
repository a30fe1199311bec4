"""Trained models of a QAT run, saved as it goes, so `--resume` (or a later lesson) reloads them instead of training.

    runs/<run>/models/seed<k>/<stage>.safetensors   the float weights after that training stage (safetensors only)
    runs/<run>/models/seed<k>/<stage>.json          what they are: stage, seed, model, QAT layers, training info

Stages: "fp32" (the fine-tune), "fp32-extra" (the FP32 reference's extra steps) and "qat" (the QAT steps, saved
*before* `convert_qat`: fake-quantized layers keep float weights, so the file holds floats only). `load_trained`
puts the weights back into a fresh copy of the base model; for "qat" it first inserts the same fake quantizers
(`prepare_qat` with the recorded layers), so the caller converts it to INT8 (`convert_qat`) or exports it exactly
as the run did. Loading reads safetensors only: no pickle, no code runs on load. The JSON is written last, so a
stage whose JSON exists was saved whole.
"""

from __future__ import annotations

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


def run_folder(run: str | os.PathLike) -> Path:
    """The run folder from a run folder or its result.json."""
    path = Path(run)
    return path.parent if path.suffix == ".json" else path


def stage_files(run: str | os.PathLike, seed: int, stage: str) -> tuple[Path, Path]:
    """(weights .safetensors, description .json) of one seed's training stage in a run folder."""
    if stage not in STAGES:
        raise SavedModelError(f"stage {stage!r} is not a training stage; use one of {', '.join(STAGES)}")
    folder = run_folder(run) / "models" / f"seed{int(seed)}"
    return folder / f"{stage}.safetensors", folder / f"{stage}.json"


def saved_stages(run: str | os.PathLike, seed: int) -> list[str]:
    """The training stages of `seed` saved whole in the run folder, in training order."""
    return [s for s in STAGES if stage_files(run, seed, s)[1].is_file()]


def _float_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every entry of the state dict once, as a contiguous CPU tensor; (tensors, aliases of tied entries)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if type(t) not in (torch.Tensor, nn.Parameter):
            raise SavedModelError(
                f"{name} is a {type(t).__name__}, not a float tensor: save the trained model before convert_qat "
                "(its fake-quantized layers still hold float weights)")
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def save_trained(run: str | os.PathLike, seed: int, stage: str, model: nn.Module, *,
                 info: dict | None = None, model_name: str | None = None) -> Path:
    """Save `model`'s float weights after training `stage` of `seed` into the run folder; returns the weights file.

    info: training facts to keep beside them (steps, train_loss, lr, device), returned by `trained_info`."""
    weights, described = stage_files(run, seed, stage)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _float_state(model)
    state = qat_state(model)
    if stage == "qat" and (state is None or state.converted):
        raise SavedModelError("stage 'qat' saves the model prepared for QAT (fake quantizers in, float weights), "
                              "after training and before convert_qat")
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"labkit_format": FORMAT, "stage": stage, "seed": str(int(seed))})
    os.replace(tmp, weights)
    description = {
        "format": FORMAT, "stage": stage, "seed": int(seed), "model": model_name, "weights": weights.name,
        "model_class": type(model).__name__, "aliases": aliases,
        "qat": None if state is None else {"layers": list(state.layers), "activations": state.activations,
                                           "embeddings": list(state.embeddings)},
        "info": info or {},
    }
    tmp_json = described.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_json, described)
    return weights


def trained_info(run: str | os.PathLike, seed: int, stage: str) -> dict:
    """The description saved with a stage (stage, seed, model, qat layers, `info` as given to save_trained)."""
    _, described = stage_files(run, seed, stage)
    if not described.is_file():
        raise SavedModelError(f"no saved {stage!r} model for seed {seed} in {run_folder(run)} "
                              f"(looked for {described}); saved stages: {saved_stages(run, seed) or 'none'}")
    return json.loads(described.read_text(encoding="utf-8"))


def load_trained(run: str | os.PathLike, seed: int, stage: str, base_model: nn.Module) -> nn.Module:
    """`base_model` (a fresh float model of the same architecture, changed in place and returned) with the weights
    saved after `stage` of `seed`; for "qat", prepared with the same fake quantizers, ready for `convert_qat`."""
    description = trained_info(run, seed, stage)
    weights, _ = stage_files(run, seed, stage)
    if description.get("format") != FORMAT:
        raise SavedModelError(f"{weights}: format {description.get('format')!r}, expected {FORMAT!r}")
    if qat_state(base_model) is not None:
        raise SavedModelError("base_model was already prepared for QAT; pass a fresh float model")
    tensors = load_file(str(weights))  # safetensors only: no pickle
    for name, stored in description.get("aliases", {}).items():
        tensors[name] = tensors[stored]
    qat = description.get("qat")
    if qat is not None:
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
    """One seed's trained stages in a run folder, for the pipeline: `load` what an earlier attempt saved (None when
    it did not), `save` as each stage finishes. `training` (what decides the weights: model, data, steps, lr ...) is
    saved with each stage; a stage saved under other settings is refused rather than reused."""

    def __init__(self, run: str | os.PathLike, seed: int, training: dict):
        self.run, self.seed, self.training = run_folder(run), int(seed), dict(training)

    def load(self, stage: str, base_model: nn.Module) -> tuple[nn.Module, dict] | None:
        """(base_model with the saved weights, its training info), or None when the stage was not saved."""
        if stage not in saved_stages(self.run, self.seed):
            return None
        saved = trained_info(self.run, self.seed, stage).get("info", {})
        if saved.get("training") != self.training:
            diff = sorted(k for k in set(saved.get("training", {})) | set(self.training)
                          if saved.get("training", {}).get(k) != self.training.get(k))
            raise SavedModelError(f"--resume: the {stage!r} model saved for seed {self.seed} in {self.run} was "
                                  f"trained with other settings ({', '.join(diff)}); resume with the same "
                                  "arguments, or start a new run")
        model = load_trained(self.run, self.seed, stage, base_model)
        return model, {k: v for k, v in saved.items() if k != "training"}

    def save(self, stage: str, model: nn.Module, info: dict) -> Path:
        return save_trained(self.run, self.seed, stage, model, info={**info, "training": self.training},
                            model_name=self.training.get("model"))



def training_settings(cfg) -> dict:
    """What decides a seed's trained weights (a QATBertConfig's model, data, steps, lr ...), saved with them."""
    keys = ("model", "dataset", "n_train", "max_length", "batch_size", "fp32_steps", "extra_steps", "lr", "extra_lr",
            "warmup_ratio", "activations", "embeddings", "seed", "data_dir")
    return {**{k: getattr(cfg, k) for k in keys}, "layers": repr(cfg.layers)}


def trained_or_loaded(store: SeedModels | None, stage: str, base: nn.Module, train_fn) -> tuple[nn.Module, dict]:
    """(`base` trained by `train_fn(base) -> info`, info), or loaded from `store` when an earlier attempt saved
    that stage; a stage trained here is saved to `store` (None: train, save nothing)."""
    saved = store.load(stage, base) if store is not None else None
    if saved is not None:
        return saved
    info = train_fn(base)
    if store is not None:
        store.save(stage, base, info)
    return base, info


__all__ = ["STAGES", "SavedModelError", "SeedModels", "load_trained", "run_folder", "save_trained", "saved_stages",
           "stage_files", "trained_info", "trained_or_loaded", "training_settings"]
