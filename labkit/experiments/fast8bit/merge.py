"""One result from several sessions' result files (parts run in separate GPU calls), re-judged."""

from __future__ import annotations

import json
from pathlib import Path

from labkit.experiments.fast8bit.block import kernel_check
from labkit.experiments.fast8bit.targets import evaluate_targets


def merge_sessions(paths: list[str | Path], command: str | None = None) -> dict:
    """One result from several sessions' files (a lent GPU may allow only minutes per call, so the parts can run
    in separate calls). Rows get `session` (1, 2, ... in file order); kernel families and checks are re-derived
    from the recorded kernel names with this version's classifier; targets are judged on the merged rows (the
    latest session's row per measurement, every session's decode ratio for the noise band)."""
    from labkit.measure.generation import classify_kernel

    results = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    if not results:
        raise SystemExit("--merge needs at least one result file")
    bad = [str(p) for p, r in zip(paths, results) if r.get("experiment") != "fast8bit"]
    if bad:
        raise SystemExit(f"--merge: {bad} are not fast8bit result files")
    rows, sessions = [], []
    for i, res in enumerate(results, start=1):
        prov = res["provenance"]
        parts = sorted({r["part"] for r in res["rows"]})
        sessions.append({"session": i, "date": prov["date"], "command": prov["command"], "parts": parts,
                         "status": res["status"], "device_name": prov["device_name"]})
        for r in res["rows"]:
            r = {**r, "session": i}
            if r.get("kernels"):
                for k in r["kernels"]:
                    k["family"] = "memory" if k["name"].startswith(("Memcpy", "Memset")) else classify_kernel(k["name"])
                if r.get("ok") and r["part"] in ("block", "decode", "prefill"):
                    m = r.get("m", 1 if r["part"] == "decode" else r.get("seq_len", 1))
                    r.update(kernel_check(r["variant"], m, r["kernels"]))
            rows.append(r)
    # a part measured again in a later session replaces the earlier one, except decode (kept for the noise band)
    latest = {}
    for r in rows:
        latest[r["part"]] = max(latest.get(r["part"], 0), r["session"])
    rows = [r for r in rows if r["part"] == "decode" or r["session"] == latest[r["part"]]]
    merged = {**results[-1], "rows": rows, "status": "complete" if all(
        s["status"] == "complete" for s in sessions) else "incomplete", "errors": [e for r in results for e in r["errors"]]}
    merged["provenance"] = {**results[-1]["provenance"], "command": command or "python -m labkit.experiments.fast8bit "
                            "--merge " + " ".join(str(p) for p in paths), "sessions": sessions}
    merged["notes"] = results[-1]["notes"] + [
        "merged from several sessions (provenance.sessions): each row carries its session; kernel families were "
        "re-derived from the recorded kernel names (top 8 by time per measurement) with the final classifier",
        "all parts in one run on a GPU: python -m labkit.bench fast8bit --profile full (about 8 minutes on an H100; "
        "a run cut short continues with the same command plus --resume --out <its run folder>)",
    ]
    merged["targets"] = evaluate_targets(rows)
    return merged
