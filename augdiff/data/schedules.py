"""Synthetic-share schedules ρ(t): the fraction of each batch drawn from synthetic data.

Seed 000 (eqs. 1-3) mixes real and synthetic images with a share that follows the training
epoch ``t`` (0-based, ``T`` = total epochs):

* constant:  ρ(t) = ρ₀                                                   (ratios of seed 003)
* linear:    ρ(t) = t / T                                                          (eq. 1)
* warm-up:   ρ(t) = 0 for t < w,  (t − w) / (T − w) for t ≥ w                     (eq. 2)
* step:      ρ(t) = 0 for t < t₁,  0.5 for t₁ ≤ t < t₂,  1 for t ≥ t₂              (eq. 3)

Every schedule is a small frozen dataclass: a picklable callable ``rho(epoch) -> float`` with
values clipped to [0, 1]. A real:synthetic ratio such as ``"1:3"`` is a constant share
``3 / (1 + 3) = 0.75``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Schedule(Protocol):
    """A synthetic share as a function of the (0-based) epoch."""

    def __call__(self, epoch: float) -> float: ...


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def _check_nonneg_epoch(epoch: float) -> None:
    if epoch < 0:
        raise ValueError(f"schedule: epoch must be >= 0, got {epoch}")


@dataclasses.dataclass(frozen=True)
class Constant:
    """ρ(t) = ρ₀."""

    rho: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"constant schedule: rho must be in [0, 1], got {self.rho}")

    def __call__(self, epoch: float) -> float:
        return float(self.rho)


@dataclasses.dataclass(frozen=True)
class Linear:
    """ρ(t) = t / T (seed 000, eq. 1)."""

    total: int

    def __post_init__(self) -> None:
        if self.total <= 0:
            raise ValueError(f"linear schedule: total epochs T must be > 0, got {self.total}")

    def __call__(self, epoch: float) -> float:
        _check_nonneg_epoch(epoch)
        return _clip(epoch / self.total)


@dataclasses.dataclass(frozen=True)
class Warmup:
    """ρ(t) = 0 for t < w, else (t − w) / (T − w) (seed 000, eq. 2)."""

    warmup: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.warmup < self.total:
            raise ValueError(
                f"warmup schedule: need 0 <= w < T, got w={self.warmup}, T={self.total}"
            )

    def __call__(self, epoch: float) -> float:
        _check_nonneg_epoch(epoch)
        if epoch < self.warmup:
            return 0.0
        return _clip((epoch - self.warmup) / (self.total - self.warmup))


@dataclasses.dataclass(frozen=True)
class Step:
    """ρ(t) = 0 for t < t₁, 0.5 for t₁ ≤ t < t₂, 1 for t ≥ t₂ (seed 000, eq. 3)."""

    t1: int
    t2: int

    def __post_init__(self) -> None:
        if not 0 <= self.t1 <= self.t2:
            raise ValueError(f"step schedule: need 0 <= t1 <= t2, got t1={self.t1}, t2={self.t2}")

    def __call__(self, epoch: float) -> float:
        _check_nonneg_epoch(epoch)
        if epoch < self.t1:
            return 0.0
        if epoch < self.t2:
            return 0.5
        return 1.0


def constant(rho: float | str) -> Constant:
    """Constant share; ``rho`` may be a float in [0, 1] or a ``"real:synthetic"`` ratio."""
    return Constant(parse_share(rho))


def linear(total: int) -> Linear:
    return Linear(int(total))


def warmup(w: int, total: int) -> Warmup:
    return Warmup(int(w), int(total))


def step(t1: int, t2: int) -> Step:
    return Step(int(t1), int(t2))


def parse_share(value: float | int | str) -> float:
    """A synthetic share: a float in [0, 1] or a ``"real:synthetic"`` ratio ("1:3" → 0.75)."""
    if isinstance(value, str):
        text = value.strip()
        if ":" in text:
            parts = text.split(":")
            try:
                real, syn = (float(p) for p in parts)
            except ValueError:
                raise ValueError(
                    f"ratio {value!r}: expected 'real:synthetic', e.g. '1:3'"
                ) from None
            if len(parts) != 2 or real < 0 or syn < 0 or real + syn <= 0:
                raise ValueError(f"ratio {value!r}: need two non-negative numbers, not both 0")
            return syn / (real + syn)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"share {value!r}: expected a float in [0, 1] or 'real:synthetic'"
            ) from None
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"synthetic share must be in [0, 1], got {share}")
    return share


_KINDS = ("constant", "linear", "warmup", "step")


def from_config(cfg: Any, epochs: int | None = None) -> Schedule:
    """Build a schedule from a config node, a float share or a ratio string.

    ``cfg`` may be a float / ``"1:3"`` (constant), or a ConfigDict / mapping with ``kind`` in
    {constant, linear, warmup, step} and the parameters of that kind:

    * constant: ``rho`` (float or ratio string; ``ratio`` accepted as an alias)
    * linear:   ``total`` (T; defaults to ``epochs``)
    * warmup:   ``warmup`` (w), ``total`` (T; defaults to ``epochs``)
    * step:     ``t1``, ``t2``
    """
    if cfg is None:
        return Constant(0.0)
    if isinstance(cfg, int | float | str):
        return constant(cfg)
    if isinstance(cfg, Schedule) and not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
        return cfg
    get = cfg.get
    kind = get("kind", "constant")
    if kind not in _KINDS:
        raise ValueError(f"schedule kind {kind!r} unknown; expected one of {_KINDS}")

    def total() -> int:
        t = get("total", None) or epochs
        if not t:
            raise ValueError(f"{kind} schedule needs 'total' (T, the number of epochs)")
        return int(t)

    if kind == "constant":
        rho = get("rho", None)
        if rho is None:
            rho = get("ratio", 0.0)
        return constant(rho)
    if kind == "linear":
        return linear(total())
    if kind == "warmup":
        if get("warmup", None) is None:
            raise ValueError(
                "warmup schedule needs 'warmup' (w, the first epoch with synthetic data)"
            )
        return warmup(int(get("warmup")), total())
    if get("t1", None) is None or get("t2", None) is None:
        raise ValueError("step schedule needs 't1' and 't2'")
    return step(int(get("t1")), int(get("t2")))
