"""Verdicts no finer than the noise: mean +- sd over seeds, and met / missed / within noise against a target.

A single run cannot say "met" when the margin is one sentence of the dev set: SST-2 dev has 872 sentences, so
one sentence is 0.11 accuracy points and the binomial standard error near 87% is ~1.1 points. The rules:

    fewer than `min_seeds` values       "no verdict"   (one seed says nothing about the spread)
    |mean - limit| <= noise             "within noise" (noise = max(sd over seeds, the measurement's resolution))
    otherwise                           "met" or "missed", by the side of the limit the mean is on

`values` are per-seed numbers of the quantity the target is about (e.g. QAT accuracy minus FP32 accuracy of the
same seed, in points); `at_least` says which side of `limit` meets it. Every experiment states its claims as
`Target`s: one of these verdicts (or "not measured"), from which `met` (True / False / None) follows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

VERDICTS = ("met", "missed", "within noise", "no verdict", "not measured")
MIN_SEEDS = 3


@dataclass(frozen=True)
class Target:
    """One claim of an experiment, judged from measured numbers. `verdict` is one of VERDICTS; `met` follows from
    it (True for met, False for missed, None otherwise). `detail`: what else the judgement rests on (seeds, sd ...).
    Reads like the dict it writes (`t["verdict"]`), so result files and Targets are shown by the same code."""

    target: str
    measured: str
    verdict: str
    value: float | None = None
    limit: float | None = None
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} of {self.target!r}: use one of {', '.join(VERDICTS)}")

    @classmethod
    def judged(cls, target: str, measured: str, v: dict, **detail) -> Target:
        """From a `verdict` or `ratio_verdict` result (its verdict, value and limit)."""
        return cls(target, measured, v["verdict"], v.get("mean", v.get("ratio")), v.get("limit"), detail)

    @classmethod
    def exact(cls, target: str, measured: str, ok: bool, value: float | None = None, limit: float | None = None,
              **detail) -> Target:
        """An exact quantity (bytes, a count, a pass/fail check): met or missed, no noise to weigh."""
        return cls(target, measured, "met" if ok else "missed", value, limit, detail)

    @classmethod
    def not_measured(cls, target: str, measured: str = "not measured in this run", **detail) -> Target:
        return cls(target, measured, "not measured", detail=detail)

    @property
    def met(self) -> bool | None:
        return {"met": True, "missed": False}.get(self.verdict)

    def as_dict(self) -> dict:
        out = {"target": self.target, "measured": self.measured, "verdict": self.verdict, "met": self.met}
        out.update({k: v for k, v in (("value", self.value), ("limit", self.limit)) if v is not None})
        return {**out, **self.detail}

    def __getitem__(self, key: str):
        return self.as_dict()[key]

    def get(self, key: str, default=None):
        return self.as_dict().get(key, default)


@dataclass(frozen=True)
class Spread:
    """mean, sample standard deviation (0 for one value) and count of repeated measurements."""

    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return format_spread(self)

    def as_dict(self) -> dict:
        return asdict(self)


def spread(values: Iterable[float]) -> Spread:
    """Mean, sample sd and n of `values` (at least one, all finite)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"spread needs finite values, got {vals}")
    return Spread(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def format_spread(s: Spread, digits: int = 2, unit: str = "") -> str:
    """"86.58 +- 0.40 (n=3)"; one value: "86.58 (n=1, no spread)"."""
    if s.n < 2:
        return f"{s.mean:.{digits}f}{unit} (n=1, no spread)"
    return f"{s.mean:.{digits}f}{unit} +- {s.sd:.{digits}f} (n={s.n})"


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy `p` (a fraction) measured on `n` examples: sqrt(p (1 - p) / n)."""
    if n < 1 or not 0 <= p <= 1:
        raise ValueError(f"binomial_se needs 0 <= p <= 1 and n >= 1, got p={p}, n={n}")
    return math.sqrt(p * (1 - p) / n)


def verdict(values: Sequence[float], limit: float, *, at_least: bool, resolution: float = 0.0,
            min_seeds: int = MIN_SEEDS) -> dict:
    """met / missed / within noise / no verdict for per-seed `values` against `limit` (see the module doc).

    resolution  the smallest difference the measurement itself resolves (e.g. one eval example, in the same
                unit as `values`); noise is never taken below it.
    Returns {"verdict", "met" (True / False / None unless met or missed), "mean", "sd", "n", "limit", "at_least",
    "margin", "noise", "values"}; margin > 0 is on the meeting side of the limit.
    """
    if min_seeds < 1:
        raise ValueError(f"min_seeds must be at least 1, got {min_seeds}")
    s = spread(values)
    margin = (s.mean - limit) if at_least else (limit - s.mean)
    noise = max(s.sd, resolution)
    if s.n < min_seeds:
        word = "no verdict"
    elif abs(margin) <= noise:
        word = "within noise"
    else:
        word = "met" if margin > 0 else "missed"
    return {"verdict": word, "met": {"met": True, "missed": False}.get(word), "mean": s.mean, "sd": s.sd, "n": s.n,
            "limit": limit, "at_least": at_least, "margin": margin, "noise": noise, "values": [float(v) for v in values]}


def verdict_text(v: dict, digits: int = 2, unit: str = "") -> str:
    """One line: "within noise: +0.12 +- 0.40 (n=3) against >= -0.30"."""
    side = ">=" if v["at_least"] else "<="
    body = format_spread(Spread(v["mean"], v["sd"], v["n"]), digits, unit)
    extra = f" (fewer than {MIN_SEEDS} seeds)" if v["verdict"] == "no verdict" else ""
    return f"{v['verdict']}{extra}: {body} against {side} {v['limit']:.{digits}f}{unit}"


def non_monotone(rows: Sequence[dict], *, x: str = "seq_len", y: str = "latency_ms", group: str = "backend",
                 low: str = "p10_ms", high: str = "p90_ms") -> list[dict]:
    """Where a curve that should grow with `x` (latency against sequence length) goes down instead.

    Per `group`, consecutive measured points (rows with a number in `y`) sorted by `x`; a drop is flagged with
    `clear` True when even the spreads do not overlap (the larger length's `high` below the smaller one's `low`),
    False when the drop is inside the spread (noise, but worth more repeats). Returns one dict per drop."""
    flags: list[dict] = []
    groups: dict = {}
    for r in rows:
        if isinstance(r.get(y), (int, float)) and r.get(x) is not None:
            groups.setdefault(r.get(group), []).append(r)
    for key, pts in groups.items():
        pts = sorted(pts, key=lambda r: r[x])
        for a, b in zip(pts, pts[1:]):
            if b[y] < a[y]:
                a_low, b_high = a.get(low, a[y]), b.get(high, b[y])
                clear = b_high is not None and a_low is not None and b_high < a_low
                flags.append({group: key, f"{x}_from": a[x], f"{x}_to": b[x], f"{y}_from": a[y], f"{y}_to": b[y],
                              "clear": bool(clear)})
    return flags


def per_seed(runs: Sequence[Sequence[dict]], variant: str, key: str, *, by: str = "variant") -> list[float]:
    """`key` of the row whose `by` is `variant`, in each run (one run = the rows of one seed); runs without it
    (a failed variant) are skipped."""
    out = []
    for rows in runs:
        row = next((r for r in rows if r.get(by) == variant), None)
        if row is not None and isinstance(row.get(key), (int, float)):
            out.append(float(row[key]))
    return out


def paired_differences(runs: Sequence[Sequence[dict]], a: str, b: str, key: str, *, scale: float = 1.0,
                       by: str = "variant", fn: Callable[[float, float], float] | None = None) -> list[float]:
    """scale * (a - b) of `key` (or `fn(a, b)`, e.g. a relative gap) within each run where both variants have it:
    the per-seed differences a verdict needs (pairing by seed removes what the two share, e.g. the same fine-tuned
    start and data order)."""
    out = []
    for rows in runs:
        ra = next((r for r in rows if r.get(by) == a), None)
        rb = next((r for r in rows if r.get(by) == b), None)
        if ra is not None and rb is not None and isinstance(ra.get(key), (int, float)) \
                and isinstance(rb.get(key), (int, float)):
            x, y = float(ra[key]), float(rb[key])
            out.append(fn(x, y) if fn is not None else scale * (x - y))
    return out


def seed_summary(runs: Sequence[Sequence[dict]], keys: Sequence[str], *, by: str = "variant") -> list[dict]:
    """One row per variant: `<key>_mean`, `<key>_sd`, `n_seeds` over the runs (variant order of the first run)."""
    variants = list(dict.fromkeys(r.get(by) for rows in runs for r in rows))
    table = []
    for v in variants:
        row: dict = {by: v}
        for key in keys:
            vals = per_seed(runs, v, key, by=by)
            if vals:
                s = spread(vals)
                row.update({f"{key}_mean": s.mean, f"{key}_sd": s.sd})
                row["n_seeds"] = max(row.get("n_seeds", 0), s.n)
        table.append(row)
    return table


def ratio_verdict(a: tuple[float, float, float], b: tuple[float, float, float], limit: float, *,
                  at_most: bool = True) -> dict:
    """Verdict on a ratio of two timings a / b, each given as (p10, p50, p90) of its repeats.

    The ratio of medians decides the side of `limit`; "within noise" when `limit` lies inside the ratio's spread
    [a.p10 / b.p90, a.p90 / b.p10]. Returns {"verdict", "met", "ratio", "ratio_low", "ratio_high", "limit"}."""
    (a10, a50, a90), (b10, b50, b90) = a, b
    if min(a10, a50, a90, b10, b50, b90) <= 0:
        raise ValueError(f"timings must be positive, got {a} and {b}")
    ratio, low, high = a50 / b50, a10 / b90, a90 / b10
    if low <= limit <= high:
        word = "within noise"
    else:
        word = "met" if (ratio <= limit) == at_most else "missed"
    return {"verdict": word, "met": {"met": True, "missed": False}.get(word), "ratio": ratio, "ratio_low": low,
            "ratio_high": high, "limit": limit}


__all__ = ["MIN_SEEDS", "VERDICTS", "Spread", "Target", "binomial_se", "format_spread", "non_monotone",
           "paired_differences", "per_seed", "ratio_verdict", "seed_summary", "spread", "verdict", "verdict_text"]
