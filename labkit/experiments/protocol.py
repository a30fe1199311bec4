"""What an experiment is, for `python -m labkit.bench` (which runs it) and for the notebook that calls it.

An experiment's bench module (labkit.experiments.<name>.bench, or the experiment's own module) offers

    NAME                      its result files' name: runs/<NAME>_<device>_<time>/, data/reference/<NAME>_<device>.json
    Settings                  one dataclass of every setting: profile defaults (`for_profile`), and a command-line
                              flag for each field made with `flag(...)` (the runner derives them)
    check(settings, options)  optional: refuse bad input before any work (ValueError naming the flag, the value
                              and the fix); `options`: the runner's --profile/--out/--resume/--update-reference
    measure(settings, run)    the measurements, each appended with `run.record(kind, row)` as it finishes;
                              `run.recorded(kind)` / `run.once(...)` reuse what an earlier attempt measured
    targets(result)           the claims as labkit.measure.stats.Target, judged from a result (this run's, or a
                              committed file's, by today's rules)
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch

from labkit.results.files import device_slug

PROFILES = ("quick", "full")


def cuda_visible() -> bool:
    return torch.cuda.is_available()


def require_gpu(why: str) -> None:
    """Refuse, before any work, a run that needs an NVIDIA GPU where none is visible (`why`: what it measures and
    what to read instead)."""
    if not cuda_visible():
        raise ValueError(why)


def flag(default: Any, help: str, *, name: str | None = None, parse=None, choices=None) -> Any:
    """A dataclass field the command line sets with `--<name>` (default: the field's name with dashes).
    parse: the argparse type (default: from the annotation: positive whole numbers, positive numbers, comma lists);
    choices: the allowed values (of a name, or of each name in a comma list)."""
    return field(default=default, metadata={"help": help, "flag": name, "parse": parse, "choices": choices})


@dataclass
class Settings:
    """Base of an experiment's settings: `for_profile(profile, **overrides)` = the field defaults, updated by the
    profile's entry in PROFILE_DEFAULTS, then by `overrides` (the flags given on the command line)."""

    profile: str = "quick"
    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {}

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> Settings:
        from labkit.env import get_profile

        profile = profile or get_profile()
        if profile not in PROFILES:
            raise ValueError(f"profile {profile!r} is not a profile; use 'quick' or 'full'")
        return cls(**{**cls.PROFILE_DEFAULTS.get(profile, {}), **overrides, "profile": profile})

    def device_slug(self) -> str:
        """The <device> of this run's file names ("cpu", "h100", ...)."""
        return device_slug()

    def as_dict(self) -> dict:
        """JSON-ready: values JSON cannot hold (a layer predicate ...) as their repr."""
        def plain(v):
            return v if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict)) else repr(v)
        return {k: plain(v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------------------------
# command-line values: each refused with the value and the fix (argparse names the flag)


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a whole number of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a whole number of at least 1")
    return value


def positive_float(text: str) -> float:
    """A number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a number above 0, e.g. 2e-5") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a number above 0, e.g. 2e-5")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers of at least 1 ("512,1024")."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers; write them like 512,1024,2048") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1; write them like 512,1024,2048")
    return values


def seed_list(text: str) -> tuple[int, ...]:
    """Comma-separated distinct seeds, whole numbers of at least 0 ("0,1,2")."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds; write them like 0,1,2") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct seeds of at least 0, like 0,1,2")
    return values


def names(choices=None):
    """Comma-separated names ("fa2,sdpa"), each one of `choices` when given."""
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(p.strip() for p in text.split(",") if p.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} names nothing; give comma-separated names")
        unknown = [v for v in values if choices is not None and v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"{text!r}: unknown {unknown[0]!r}; choose from {','.join(choices)}")
        return values
    return parse


__all__ = ["PROFILES", "Settings", "cuda_visible", "flag", "names", "positive_float", "positive_int", "positive_ints",
           "require_gpu", "seed_list"]
