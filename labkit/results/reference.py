"""Committed reference results (data/reference/<experiment>_<device>.json): find them and load them, one way.

A file counts as a reference only when it is a complete run of the full profile: a quick smoke run, or a run
that stopped half-way, is never shown as "the committed reference".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from labkit.results.files import REFERENCE_DIR

# experiment -> its `python -m labkit.bench` name, where they differ
COMMANDS = {"qat_bert": "qat", "deploy_bert": "deploy", "triton_fa2": "triton-fa2", "hybrid_qat_fsdp": "hybrid-qat"}


def reference_dir() -> Path:
    """Where committed results are read from: `$LABKIT_REFERENCE_DIR` if set, else data/reference of the
    repository labkit lives in (falling back to the working directory's)."""
    if os.environ.get("LABKIT_REFERENCE_DIR"):
        return Path(os.environ["LABKIT_REFERENCE_DIR"])
    here = Path(__file__).resolve().parents[2] / REFERENCE_DIR
    return here if here.is_dir() else Path.cwd() / REFERENCE_DIR


def result_profile(data: dict) -> str | None:
    """The run profile a result file records (files of different experiments keep it in different places)."""
    return (data.get("profile") or data.get("config", {}).get("profile")
            or data.get("provenance", {}).get("profile"))


def is_reference(data: dict) -> tuple[bool, str]:
    """(True, "") for a complete full-profile run, else (False, why not)."""
    profile = result_profile(data)
    if profile != "full":
        return False, f"profile is {profile!r}, not 'full'"
    status = data.get("status", "complete")  # files written only at the end of a run carry no status
    if status != "complete":
        return False, f"status is {status!r}, not 'complete'"
    return True, ""


def reference_devices(experiment: str, directory: str | Path | None = None) -> list[str]:
    """Device slugs with a committed file for `experiment` ("cpu", "h100", ...), sorted."""
    directory = Path(directory) if directory is not None else reference_dir()
    return [p.stem.removeprefix(f"{experiment}_") for p in _reference_files(directory, experiment)]


def _reference_files(directory: Path, experiment: str, device: str | None = None) -> list[Path]:
    """`<experiment>_<device>.json` files; a device slug has no underscore, so `hybrid` never matches
    another experiment's file such as `hybrid_qat_fsdp_h200x2.json`."""
    pattern = f"{experiment}_{device}.json" if device else f"{experiment}_*.json"
    return [p for p in sorted(directory.glob(pattern)) if "_" not in p.stem.removeprefix(f"{experiment}_")]


def load_reference(experiment: str, device: str | None = None, *, gpu_only: bool = False,
                   directory: str | Path | None = None) -> tuple[dict | None, str]:
    """(committed reference result of `experiment`, message); the result carries its file as `path`.

    device: a slug ("cpu", "h100"); None: the newest reference of any device (GPU ones only with `gpu_only`).
    Returns (None, why) when there is none, so a notebook can say so instead of failing.
    """
    directory = Path(directory) if directory is not None else reference_dir()
    found, skipped = [], []
    for path in _reference_files(directory, experiment, device):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            return None, (f"{path} could not be read ({err}); regenerate it with "
                          f"`python -m labkit.bench {COMMANDS.get(experiment, experiment)} --profile full "
                          "--update-reference`")
        if gpu_only and data.get("provenance", {}).get("device") != "cuda":
            continue
        ok, why = is_reference(data)
        if not ok:
            skipped.append(f"{path.name} ({why})")
            continue
        data["path"] = str(path)
        found.append((data.get("provenance", {}).get("date", ""), path, data))
    if not found:
        where = f"`{experiment}_{device or '*'}.json`" + (" from a GPU" if gpu_only else "")
        return None, (f"no committed full-profile result {where} in {directory} yet"
                      + (f" (not references: {', '.join(skipped)})" if skipped else "")
                      + f". It is written by `python -m labkit.bench {COMMANDS.get(experiment, experiment)} "
                        "--profile full --update-reference`"
                      + (" on an NVIDIA GPU." if gpu_only else "."))
    _, path, data = max(found, key=lambda t: t[0])
    return data, f"loaded {path.name}"
