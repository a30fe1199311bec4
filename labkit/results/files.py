"""Result files: atomic JSON, appended JSONL (one finished measurement a line), device slugs, the command line."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import torch

REFERENCE_DIR = Path("data") / "reference"


def device_slug(device: torch.device | str | None = None) -> str:
    """"cpu", or a short GPU name for file names: "NVIDIA H100 80GB HBM3" -> "h100"."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    for word in ("nvidia", "geforce", "tesla", "rtx"):
        name = name.replace(word, " ")
    match = re.search(r"[a-z]*\d+[a-z]*", name)
    return match.group(0) if match else "gpu"


def command_line(argv: list[str] | None = None) -> str | None:
    """`python -m labkit.bench <args>` as typed, or `torchrun --nproc-per-node N -m labkit.bench <args>` in a job
    torchrun started (None when there are no arguments to show)."""
    argv = sys.argv[1:] if argv is None else argv
    launcher = (f"torchrun --nproc-per-node {os.environ['WORLD_SIZE']}" if "TORCHELASTIC_RUN_ID" in os.environ
                and "WORLD_SIZE" in os.environ else "python")
    return f"{launcher} -m labkit.bench " + " ".join(shlex.quote(a) for a in argv) if argv else None


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row to a JSONL file and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (a truncated last line, from an interrupted write, is ignored)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
