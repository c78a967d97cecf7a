"""Diffusion samplers in pure JAX, written once and used by every latent-diffusion method.

Each sampler reproduces one diffusers scheduler step for step (same timesteps, same update, same
noise injection points), but is a frozen dataclass whose per-step coefficients are precomputed
numpy tables, so ``step`` is a pure function of ``(i, model_output, x, carry, key)`` and the
whole denoising loop runs as one ``lax.fori_loop`` inside one ``jax.jit``.

Notation (shared by every sampler below). Training times ``t = 0..T-1`` with betas ``β_t`` and
``ᾱ_t = ∏_{s≤t} (1 - β_s)``. The variance-preserving (VP) form of the forward process is

    x_t = √ᾱ_t · x_0 + √(1 - ᾱ_t) · ε,                         (DDPM, Ho et al. 2020, eq. 4)

and the equivalent variance-exploding form used by the Euler samplers (Karras et al. 2022) is
``x̃ = x_t / √ᾱ_t = x_0 + σ_t ε`` with ``σ_t = √((1 - ᾱ_t) / ᾱ_t)``. The network predicts ε
("epsilon"), ``v = √ᾱ_t ε - √(1-ᾱ_t) x_0`` ("v_prediction", Salimans & Ho 2022, §4) or x_0
("sample").

Samplers (``make_sampler(kind, ...)``):

- ``ddim``: Song et al. 2021, eqs. 12 and 16 (``eta`` interpolates DDIM → DDPM noise);
  diffusers ``DDIMScheduler``.
- ``ddpm``: ancestral sampling with the posterior q(x_{t-1} | x_t, x_0), Ho et al. 2020,
  eqs. 6-7; diffusers ``DDPMScheduler``.
- ``euler``: Euler's method on the probability-flow ODE dx̃/dσ = (x̃ - D(x̃))/σ, Karras et al.
  2022, Algorithm 2 (with optional churn); diffusers ``EulerDiscreteScheduler``.
- ``euler_ancestral``: Euler step to σ_down plus fresh noise of std σ_up (k-diffusion's
  ``sample_euler_ancestral``); diffusers ``EulerAncestralDiscreteScheduler``. DiffuseMix's.
- ``dpmpp_2m``: DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++"), Algorithm 2 with the
  midpoint form; first order on the first step and on the last step (σ = 0), as diffusers'
  ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)``.
- ``pndm``: PLMS, the pseudo linear multi-step method of Liu et al. 2022 (PNDM, eqs. 9, 12)
  with the ``skip_prk_steps`` warm-up SD-1.x ships; diffusers ``PNDMScheduler``.

Precision: schedule tables are derived in float64 and stored in float32 (diffusers keeps them in
float32); the update itself runs in float32 (or the input's wider dtype) and the result is cast
back to the input's dtype, so a bf16 UNet output never degrades the latent trajectory.

Randomness: step ``i`` draws its noise from ``jax.random.fold_in(key, i)`` (``step_noise``). A
*batch* of keys (one per example, e.g. ``fold_in(base_key, example_number)``) gives every row its
own stream, so an example's image does not depend on the batch it was generated in.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
ModelFn = Callable[[Array, Array, Array], Array]
"""``model_fn(x_in, t, i) -> model_output``: the (guided) denoiser on the scaled input."""

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
SAMPLER_KINDS = ("ddim", "ddpm", "euler", "euler_ancestral", "dpmpp_2m", "pndm")

# diffusers' class defaults for ``timestep_spacing`` when a scheduler config leaves it out
# (SD-1.x's PNDM config does): DDIM/DDPM "leading", the sigma-space samplers "linspace".
_DEFAULT_SPACING = {
    "ddim": "leading",
    "ddpm": "leading",
    "euler": "linspace",
    "euler_ancestral": "linspace",
    "dpmpp_2m": "linspace",
    "pndm": "leading",
}

# Scheduler-config options that change the sampling maths in ways these samplers do not
# implement, with the value under which they are exact. A config asking for anything else fails.
_UNSUPPORTED_OPTIONS: dict[str, Any] = {
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "use_dynamic_shifting": False,
    "timestep_type": "discrete",
    "interpolation_type": "linear",
    "final_sigmas_type": "zero",
}


# --------------------------------------------------------------------------------------------
# Noise schedule
# --------------------------------------------------------------------------------------------


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: ``ᾱ(t) = cos²((t + s)/(1 + s) · π/2)``, s = 0.008.

    ``β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta)`` (their §3.2 clipping to 0.999).
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return np.array(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
        dtype=np.float64,
    )


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule and the scheduler options every sampler shares.

    Field names and defaults are diffusers' (``DDIMScheduler``), so
    ``NoiseSchedule.from_diffusers_config(json.load(open("scheduler_config.json")))`` is the
    schedule the checkpoint was trained with. ``timestep_spacing=None`` means "the default of
    the sampler class", exactly as ``XScheduler.from_config(cfg)`` resolves a missing key.
    Frozen and hashable, so a sampler built from it can be a static jit argument.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str | None = None
    steps_offset: int = 0
    set_alpha_to_one: bool | None = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"
    skip_prk_steps: bool | None = None

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.trained_betas is None and self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule {self.beta_schedule!r} is not supported; "
                f"use one of {BETA_SCHEDULES}"
            )
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(self.trained_betas)} entries but num_train_timesteps "
                f"is {self.num_train_timesteps}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported; use one of "
                f"{PREDICTION_TYPES}"
            )
        if self.timestep_spacing is not None and self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {self.timestep_spacing!r} is not supported; use one of "
                f"{TIMESTEP_SPACINGS}"
            )
        if self.variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type {self.variance_type!r} is not supported (learned variances need "
                f"a 2C-channel UNet); use one of {VARIANCE_TYPES}"
            )

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any] | str | os.PathLike) -> NoiseSchedule:
        """Build from a diffusers ``scheduler_config.json`` (a dict, the file, or its folder).

        Keys the config leaves out take diffusers' defaults; unrelated keys (``_class_name``,
        ``skip_prk_steps``, ...) are ignored; options that would change the maths in ways these
        samplers do not implement (Karras sigmas, thresholding, zero-terminal-SNR rescaling, ...)
        raise a ``ValueError`` naming the option.
        """
        if not isinstance(config, Mapping):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "scheduler_config.json")
            if not os.path.exists(path):
                raise FileNotFoundError(f"scheduler config not found: {path}")
            with open(path) as f:
                config = json.load(f)
        for key, ok in _UNSUPPORTED_OPTIONS.items():
            value = config.get(key)
            if value is not None and value != ok:
                raise ValueError(
                    f"scheduler option {key}={value!r} is not supported by augdiff's samplers "
                    f"(only {key}={ok!r})"
                )
        trained = config.get("trained_betas")
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in config and config[field.name] is not None:
                kwargs[field.name] = config[field.name]
        if trained is not None:
            kwargs["trained_betas"] = tuple(float(b) for b in trained)
        for name, typ in (("num_train_timesteps", int), ("steps_offset", int)):
            if name in kwargs:
                kwargs[name] = typ(kwargs[name])
        for name in ("beta_start", "beta_end", "clip_sample_range"):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        return cls(**kwargs)

    @functools.cached_property
    def betas(self) -> np.ndarray:
        """β_t, t = 0..T-1 (float32). ``scaled_linear`` is linear in √β (the SD schedule)."""
        n = self.num_train_timesteps
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, dtype=np.float64)
        elif self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        elif self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        else:
            betas = _cosine_betas(n)
        return betas.astype(np.float32)

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t = ∏_{s≤t} (1 - β_s) (float32; the product is accumulated in float64)."""
        return np.cumprod(1.0 - self.betas.astype(np.float64)).astype(np.float32)

    @functools.cached_property
    def train_sigmas(self) -> np.ndarray:
        """σ_t = √((1 - ᾱ_t) / ᾱ_t) for t = 0..T-1 (float32): the VE noise level of step t."""
        ac = self.alphas_cumprod.astype(np.float64)
        return np.sqrt((1.0 - ac) / ac).astype(np.float32)

    def alpha_to_one_for(self, kind: str) -> bool:
        """``set_alpha_to_one`` for sampler ``kind``: the config value, else the class default
        (``PNDMScheduler`` False, ``DDIMScheduler`` True)."""
        if self.set_alpha_to_one is None:
            return kind != "pndm"
        return bool(self.set_alpha_to_one)

    def spacing_for(self, kind: str) -> str:
        """The timestep spacing sampler ``kind`` uses (config value or the class default)."""
        return self.timestep_spacing or _DEFAULT_SPACING[kind]


def from_diffusers_config(config: Mapping[str, Any] | str | os.PathLike) -> NoiseSchedule:
    """Alias of :meth:`NoiseSchedule.from_diffusers_config`."""
    return NoiseSchedule.from_diffusers_config(config)


def spaced_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str,
    steps_offset: int = 0,
    *,
    extra_point: bool = False,
    integer: bool = True,
) -> np.ndarray:
    """The descending inference timesteps, as diffusers' ``set_timesteps`` computes them.

    Spacings follow Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are
    Flawed"), Table 2, with T training steps and N inference steps:

    - ``linspace``: round(linspace(0, T-1, N)) (the Euler samplers keep the fractional values,
      ``integer=False``),
    - ``leading``: k · ⌊T/N⌋ + steps_offset, k = 0..N-1,
    - ``trailing``: round(T - k · T/N) - 1, k = 0..N-1.

    ``extra_point`` is DPM-Solver's variant: N+1 points are laid out and the last (t ≈ 0) is
    dropped, because its final step goes to σ = 0 instead.
    Returns int64 when ``integer`` else float32 (the Euler samplers' dtype).
    """
    T, n = num_train_timesteps, num_inference_steps
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {n}")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing {spacing!r} is not one of {TIMESTEP_SPACINGS}")
    if extra_point:
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        elif spacing == "leading":
            ts = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
        else:
            ts = np.arange(T, 0, -T / n).round() - 1
        return np.ascontiguousarray(ts).astype(np.int64)
    if spacing == "linspace":
        if integer:
            ts = np.linspace(0, T - 1, n).round()[::-1]
        else:
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    return np.ascontiguousarray(ts).astype(np.int64 if integer else np.float32)


# --------------------------------------------------------------------------------------------
# Shared pieces: noise, dtype, model-output conversion
# --------------------------------------------------------------------------------------------


def _is_key_batch(key: Array) -> bool:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def step_noise(
    key: Array, i: int | Array, shape: tuple[int, ...], dtype: Any = jnp.float32
) -> Array:
    """z ~ N(0, I) of the given shape for sampler step ``i``, drawn from ``fold_in(key, i)``.

    ``key`` is one key, or a batch of keys (one per row of ``shape[0]``), in which case row b
    is drawn from ``fold_in(key[b], i)`` with shape ``shape[1:]``. This is the only place the
    samplers draw randomness, so callers (and tests) can reproduce the exact noise.
    """
    if _is_key_batch(key):
        if key.shape[0] != shape[0]:
            raise ValueError(
                f"a batch of {key.shape[0]} keys was given for a batch of {shape[0]} samples"
            )
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape[1:], dtype))(
            key
        )
    return jax.random.normal(jax.random.fold_in(key, i), shape, dtype)


def _compute_dtype(x: Array) -> Any:
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _at(table: np.ndarray, i: int | Array, dtype: Any) -> Array:
    """Entry ``i`` (static or traced) of a per-step coefficient table, as a ``dtype`` scalar."""
    return jnp.asarray(table)[i].astype(dtype)


def vp_predict_x0_eps(
    prediction_type: str, model_output: Array, x: Array, alpha: Array, sigma: Array
) -> tuple[Array, Array]:
    """(x̂_0, ε̂) from a model output at a VP point ``x = α x_0 + σ ε`` (α² + σ² = 1).

    epsilon: x̂_0 = (x - σ ε̂)/α (DDPM eq. 15); v: x̂_0 = α x - σ v, ε̂ = α v + σ x
    (Salimans & Ho 2022, §4); sample: ε̂ = (x - α x̂_0)/σ.
    """
    if prediction_type == "epsilon":
        return (x - sigma * model_output) / alpha, model_output
    if prediction_type == "v_prediction":
        return alpha * x - sigma * model_output, alpha * model_output + sigma * x
    if prediction_type == "sample":
        return model_output, (x - alpha * model_output) / sigma
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def ve_predict_x0(
    prediction_type: str, model_output: Array, x: Array, sigma: Array, sigma_hat: Array
) -> Array:
    """The denoiser D(x̃) at a VE point ``x̃ = x_0 + σ ε`` (Karras et al. 2022, Table 1).

    epsilon: D = x̃ - σ̂ ε̂ (σ̂ = the churned level, Karras Alg. 2); v: D = x̃/(σ²+1) - σ v/√(σ²+1)
    (the v-parametrisation rewritten for x̃ = x_t/α_t); sample: D = model output.
    """
    if prediction_type == "epsilon":
        return x - sigma_hat * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / jnp.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sampler(abc.ABC):
    """Base: a fixed schedule of ``num_steps`` steps, indexed i = 0..num_steps-1.

    Subclasses define ``timesteps`` and ``step``. All methods are pure; ``i`` may be a Python
    int or a traced int32 scalar; per-step constants are numpy tables indexed by ``i``.
    """

    schedule: NoiseSchedule
    num_inference_steps: int

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        T = self.schedule.num_train_timesteps
        if not 1 <= self.num_inference_steps <= T:
            raise ValueError(
                f"num_inference_steps must be in [1, {T}] (num_train_timesteps), "
                f"got {self.num_inference_steps}"
            )

    # --- schedule ---------------------------------------------------------------------------
    @functools.cached_property
    def timesteps(self) -> np.ndarray:
        """Descending model timesteps, one per step (diffusers' ``scheduler.timesteps``)."""
        s = self.schedule
        return spaced_timesteps(
            s.num_train_timesteps,
            self.num_inference_steps,
            s.spacing_for(self.kind),
            s.steps_offset,
        )

    @property
    def num_steps(self) -> int:
        return int(len(self.timesteps))

    @property
    def init_noise_sigma(self) -> float:
        """Std of the initial latent noise: x_T = init_noise_sigma · z."""
        return 1.0

    @property
    def stochastic(self) -> bool:
        """Whether ``step`` draws noise (then it needs a key)."""
        return False

    # --- per-step API -----------------------------------------------------------------------
    def scale_model_input(self, x: Array, i: int | Array) -> Array:
        """The UNet input at step i (identity for VP samplers)."""
        del i
        return x

    def init_carry(self, x: Array) -> Any:
        """Sampler state carried between steps (fixed-shape pytree); none by default."""
        del x
        return ()

    @abc.abstractmethod
    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        """One reverse step from ``x`` at step i to step i+1: ``(x_next, carry)``.

        ``model_output`` is the network's output on ``scale_model_input(x, i)`` at
        ``timesteps[i]``; ``key`` (one key, or one per row) is used as ``fold_in(key, i)``.
        """

    def add_noise(self, x0: Array, noise: Array, i: int | Array) -> Array:
        """Forward-diffuse clean ``x0`` to the noise level of step i (img2img's start point)."""
        a = self._sqrt_alpha_cumprod_t
        s = self._sqrt_one_minus_alpha_cumprod_t
        dt = _compute_dtype(x0)
        out = _at(a, i, dt) * x0.astype(dt) + _at(s, i, dt) * noise.astype(dt)
        return out.astype(x0.dtype)

    def img2img_start(self, strength: float) -> int:
        """First step index for img2img at ``strength`` (diffusers' ``get_timesteps``).

        ``init = min(int(N · strength), N)``, ``start = max(N - init, 0)``: strength 1 starts
        from pure noise (step 0), strength → 0 keeps more of the input image.
        """
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"img2img strength must be in [0, 1], got {strength}")
        n = self.num_inference_steps
        init_timestep = min(int(n * strength), n)
        start = max(n - init_timestep, 0)
        if start >= self.num_steps:
            raise ValueError(
                f"img2img strength {strength} with {n} steps leaves no denoising step; "
                f"raise the strength or the number of steps"
            )
        return start

    # --- tables shared by the VP samplers -------------------------------------------------
    @functools.cached_property
    def _sqrt_alpha_cumprod_t(self) -> np.ndarray:
        ac = self.schedule.alphas_cumprod.astype(np.float64)[self.timesteps.astype(np.int64)]
        return np.sqrt(ac).astype(np.float32)

    @functools.cached_property
    def _sqrt_one_minus_alpha_cumprod_t(self) -> np.ndarray:
        ac = self.schedule.alphas_cumprod.astype(np.float64)[self.timesteps.astype(np.int64)]
        return np.sqrt(1.0 - ac).astype(np.float32)

    def _require_key(self, key: Array | None) -> Array:
        if key is None:
            raise ValueError(f"{self.kind} sampler with these settings is stochastic: pass a key")
        return key

    def _clip(self, x0: Array) -> Array:
        if self.schedule.clip_sample:
            r = self.schedule.clip_sample_range
            return jnp.clip(x0, -r, r)
        return x0


@dataclasses.dataclass(frozen=True)
class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021), diffusers ``DDIMScheduler``.

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ_t²) ε̂ + σ_t z          (eq. 12)
    σ_t(η) = η √((1 - ᾱ_{t'})/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t'})            (eq. 16)

    with t' = t - ⌊T/N⌋ (diffusers' rule, kept even for trailing/linspace spacing) and
    ᾱ_{t'} = 1 (``set_alpha_to_one``) or ᾱ_0 when t' < 0. x̂_0 is clipped when ``clip_sample``.
    """

    eta: float = 0.0
    kind: ClassVar[str] = "ddim"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {self.eta}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    @functools.cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        s = self.schedule
        ac = s.alphas_cumprod.astype(np.float64)
        t = self.timesteps.astype(np.int64)
        prev = t - s.num_train_timesteps // self.num_inference_steps
        final = 1.0 if s.alpha_to_one_for(self.kind) else ac[0]
        a_t = ac[t]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = self.eta * np.sqrt(variance)
        f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
        return {
            "sqrt_a_prev": f32(np.sqrt(a_prev)),
            "dir_coef": f32(np.sqrt(np.maximum(1 - a_prev - std**2, 0.0))),
            "std": f32(std),
        }

    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        dt = _compute_dtype(x)
        xc, out = x.astype(dt), model_output.astype(dt)
        tb = self._tables
        x0, eps = vp_predict_x0_eps(
            self.schedule.prediction_type,
            out,
            xc,
            _at(self._sqrt_alpha_cumprod_t, i, dt),
            _at(self._sqrt_one_minus_alpha_cumprod_t, i, dt),
        )
        x0 = self._clip(x0)
        x_prev = _at(tb["sqrt_a_prev"], i, dt) * x0 + _at(tb["dir_coef"], i, dt) * eps
        if self.stochastic:
            z = step_noise(self._require_key(key), i, x.shape, dt)
            x_prev = x_prev + _at(tb["std"], i, dt) * z
        return x_prev.astype(x.dtype), carry


@dataclasses.dataclass(frozen=True)
class DDPMSampler(Sampler):
    """Ancestral DDPM sampling (Ho et al. 2020), diffusers ``DDPMScheduler``.

    With t' the next inference timestep (or -1 → ᾱ = 1 after the last), β̃ = 1 - ᾱ_t/ᾱ_{t'}:
    μ̃ = √ᾱ_{t'} β̃ / (1 - ᾱ_t) · x̂_0 + √(ᾱ_t/ᾱ_{t'}) (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t   (eq. 7)
    x_{t'} = μ̃ + σ z (only while t > 0), σ² = (1 - ᾱ_{t'})/(1 - ᾱ_t) β̃ ("fixed_small",
    clamped at 1e-20) or β̃ ("fixed_large") (§3.2).
    """

    kind: ClassVar[str] = "ddpm"

    @property
    def stochastic(self) -> bool:
        return True

    @functools.cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        s = self.schedule
        ac = s.alphas_cumprod.astype(np.float64)
        t = self.timesteps.astype(np.int64)
        prev = np.concatenate([t[1:], [-1]])
        a_t = ac[t]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
        alpha_step = a_t / a_prev
        beta_step = 1 - alpha_step
        if s.variance_type == "fixed_large":
            var = beta_step
        else:  # fixed_small / fixed_small_log (identical: exp(½ log v) = √v)
            var = np.maximum((1 - a_prev) / (1 - a_t) * beta_step, 1e-20)
        std = np.where(t > 0, np.sqrt(var), 0.0)
        f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
        return {
            "x0_coef": f32(np.sqrt(a_prev) * beta_step / (1 - a_t)),
            "xt_coef": f32(np.sqrt(alpha_step) * (1 - a_prev) / (1 - a_t)),
            "std": f32(std),
        }

    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        dt = _compute_dtype(x)
        xc, out = x.astype(dt), model_output.astype(dt)
        tb = self._tables
        x0, _ = vp_predict_x0_eps(
            self.schedule.prediction_type,
            out,
            xc,
            _at(self._sqrt_alpha_cumprod_t, i, dt),
            _at(self._sqrt_one_minus_alpha_cumprod_t, i, dt),
        )
        x0 = self._clip(x0)
        mean = _at(tb["x0_coef"], i, dt) * x0 + _at(tb["xt_coef"], i, dt) * xc
        z = step_noise(self._require_key(key), i, x.shape, dt)
        return (mean + _at(tb["std"], i, dt) * z).astype(x.dtype), carry


@dataclasses.dataclass(frozen=True)
class _SigmaSampler(Sampler):
    """Shared by the Euler samplers: VE noise levels σ_i at the (fractional) timesteps.

    σ_i is σ(t) linearly interpolated at t_i, with σ_N = 0 appended; the latent lives in the VE
    scale (x_T = σ_max z) and the UNet sees x / √(σ_i² + 1), the VP point of the same level.
    """

    @functools.cached_property
    def timesteps(self) -> np.ndarray:
        s = self.schedule
        return spaced_timesteps(
            s.num_train_timesteps,
            self.num_inference_steps,
            s.spacing_for(self.kind),
            s.steps_offset,
            integer=False,
        )

    @functools.cached_property
    def sigmas(self) -> np.ndarray:
        """σ_0 > ... > σ_{N-1} > σ_N = 0 (float32, length N+1)."""
        train = self.schedule.train_sigmas
        sig = np.interp(self.timesteps, np.arange(len(train)), train)
        return np.concatenate([sig, [0.0]]).astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        smax = float(self.sigmas.max())
        if self.schedule.spacing_for(self.kind) in ("linspace", "trailing"):
            return smax
        return math.sqrt(smax**2 + 1)

    def scale_model_input(self, x: Array, i: int | Array) -> Array:
        dt = _compute_dtype(x)
        sigma = _at(self.sigmas, i, dt)
        return (x.astype(dt) / jnp.sqrt(sigma**2 + 1)).astype(x.dtype)

    def add_noise(self, x0: Array, noise: Array, i: int | Array) -> Array:
        """x̃ = x_0 + σ_i z."""
        dt = _compute_dtype(x0)
        return (x0.astype(dt) + noise.astype(dt) * _at(self.sigmas, i, dt)).astype(x0.dtype)


@dataclasses.dataclass(frozen=True)
class EulerSampler(_SigmaSampler):
    """Euler on the probability-flow ODE (Karras et al. 2022, Alg. 2), ``EulerDiscreteScheduler``.

    γ_i = min(s_churn/N, √2 - 1) if s_tmin ≤ σ_i ≤ s_tmax else 0;  σ̂ = σ_i (1 + γ_i);
    x̂ = x + s_noise z √(σ̂² - σ_i²) (only when γ_i > 0);
    d = (x̂ - D(x̂))/σ̂;  x_{i+1} = x̂ + (σ_{i+1} - σ̂) d.
    Deterministic for the default ``s_churn = 0``.
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    kind: ClassVar[str] = "euler"

    @functools.cached_property
    def _gammas(self) -> np.ndarray:
        sig = self.sigmas[:-1].astype(np.float64)
        g = min(self.s_churn / self.num_steps, 2**0.5 - 1)
        return np.where((self.s_tmin <= sig) & (sig <= self.s_tmax), g, 0.0)

    @property
    def stochastic(self) -> bool:
        return bool(np.any(self._gammas > 0))

    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        dt = _compute_dtype(x)
        xc, out = x.astype(dt), model_output.astype(dt)
        sigma = _at(self.sigmas, i, dt)
        if self.stochastic:
            gamma = _at(self._gammas, i, dt)
            sigma_hat = sigma * (gamma + 1)
            z = step_noise(self._require_key(key), i, x.shape, dt) * self.s_noise
            xc = jnp.where(gamma > 0, xc + z * jnp.sqrt(sigma_hat**2 - sigma**2), xc)
        else:
            sigma_hat = sigma
        x0 = ve_predict_x0(self.schedule.prediction_type, out, xc, sigma, sigma_hat)
        derivative = (xc - x0) / sigma_hat
        x_next = xc + derivative * (_at(self.sigmas, i + 1, dt) - sigma_hat)
        return x_next.astype(x.dtype), carry


@dataclasses.dataclass(frozen=True)
class EulerAncestralSampler(_SigmaSampler):
    """Euler-ancestral, diffusers ``EulerAncestralDiscreteScheduler`` (k-diffusion).

    σ_up = √(σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²),  σ_down = √(σ_{i+1}² - σ_up²);
    x_{i+1} = x + (σ_down - σ_i) (x - D(x))/σ_i + σ_up z.
    """

    kind: ClassVar[str] = "euler_ancestral"

    def __post_init__(self) -> None:
        super().__post_init__()
        # As diffusers: the ancestral step is defined for ε- and v-prediction models only.
        if self.schedule.prediction_type == "sample":
            raise ValueError(
                "euler_ancestral does not support prediction_type='sample' "
                "(use 'epsilon' or 'v_prediction', or another sampler)"
            )

    @property
    def stochastic(self) -> bool:
        return True

    @functools.cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        s_from = self.sigmas[:-1].astype(np.float64)
        s_to = self.sigmas[1:].astype(np.float64)
        up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
        down = np.sqrt(np.maximum(s_to**2 - up**2, 0.0))
        return {"sigma_up": up.astype(np.float32), "sigma_down": down.astype(np.float32)}

    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        dt = _compute_dtype(x)
        xc, out = x.astype(dt), model_output.astype(dt)
        sigma = _at(self.sigmas, i, dt)
        x0 = ve_predict_x0(self.schedule.prediction_type, out, xc, sigma, sigma)
        derivative = (xc - x0) / sigma
        x_next = xc + derivative * (_at(self._tables["sigma_down"], i, dt) - sigma)
        z = step_noise(self._require_key(key), i, x.shape, dt)
        x_next = x_next + z * _at(self._tables["sigma_up"], i, dt)
        return x_next.astype(x.dtype), carry


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, midpoint form), ``DPMSolverMultistepScheduler``.

    In the VP parametrisation α_i = 1/√(σ_i²+1), s_i = σ_i α_i, λ_i = log(α_i/s_i) and data
    prediction D_i = x̂_0 at step i, with h = λ_{i+1} - λ_i, r = (λ_i - λ_{i-1})/h:

    first order (step 0, and the last step, which ends at σ = 0):
        x_{i+1} = (s_{i+1}/s_i) x_i - α_{i+1} (e^{-h} - 1) D_i
    second order otherwise:
        x_{i+1} = (s_{i+1}/s_i) x_i - α_{i+1} (e^{-h} - 1) (D_i + ½ (D_i - D_{i-1})/r).

    The carry holds D_{i-1} and how many steps have been taken (img2img starts mid-schedule
    with an empty history, as diffusers does).
    """

    kind: ClassVar[str] = "dpmpp_2m"

    @functools.cached_property
    def timesteps(self) -> np.ndarray:
        s = self.schedule
        return spaced_timesteps(
            s.num_train_timesteps,
            self.num_inference_steps,
            s.spacing_for(self.kind),
            s.steps_offset,
            extra_point=True,
        )

    @functools.cached_property
    def sigmas(self) -> np.ndarray:
        """σ at each timestep, then σ_N = 0 (float32, length N+1)."""
        sig = self.schedule.train_sigmas[self.timesteps]
        return np.concatenate([sig, [0.0]]).astype(np.float32)

    @functools.cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        sig = self.sigmas.astype(np.float64)
        alpha = 1.0 / np.sqrt(sig**2 + 1)
        s = sig * alpha
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.log(alpha) - np.log(s)  # λ_N = +inf
            h = lam[1:] - lam[:-1]
            phi = -alpha[1:] * np.expm1(-h)  # -α_{i+1}(e^{-h} - 1); = α_N = 1 on the last step
            inv_r = np.zeros_like(h)
            inv_r[1:] = h[1:] / h[:-1]  # 1/r_i = h_i / h_{i-1}
        inv_r = np.where(np.isfinite(inv_r), inv_r, 0.0)
        return {
            "alpha": alpha.astype(np.float32),
            "sigma_vp": s.astype(np.float32),
            "ratio": (s[1:] / s[:-1]).astype(np.float32),
            "phi": phi.astype(np.float32),
            "inv_r": inv_r.astype(np.float32),
        }

    def init_carry(self, x: Array) -> tuple[Array, Array]:
        """(D_{i-1}, number of steps taken so far)."""
        return jnp.zeros(x.shape, _compute_dtype(x)), jnp.zeros((), jnp.int32)

    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        del key
        dt = _compute_dtype(x)
        xc, out = x.astype(dt), model_output.astype(dt)
        tb = self._tables
        prev_d, count = carry
        d, _ = vp_predict_x0_eps(
            self.schedule.prediction_type,
            out,
            xc,
            _at(tb["alpha"], i, dt),
            _at(tb["sigma_vp"], i, dt),
        )
        second_order = (count >= 1) & (jnp.asarray(i) != self.num_steps - 1)
        d1 = jnp.where(second_order, _at(tb["inv_r"], i, dt) * (d - prev_d), 0.0)
        phi = _at(tb["phi"], i, dt)
        x_next = _at(tb["ratio"], i, dt) * xc + phi * d + 0.5 * phi * d1
        return x_next.astype(x.dtype), (d, jnp.minimum(count + 1, 2).astype(jnp.int32))

    def add_noise(self, x0: Array, noise: Array, i: int | Array) -> Array:
        """α_i x_0 + s_i z at the level σ_i."""
        dt = _compute_dtype(x0)
        tb = self._tables
        out = _at(tb["alpha"], i, dt) * x0.astype(dt) + _at(tb["sigma_vp"], i, dt) * noise.astype(
            dt
        )
        return out.astype(x0.dtype)


@dataclasses.dataclass(frozen=True)
class PNDMSampler(Sampler):
    """PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models", eqs. 9 and 12)
    with the ``skip_prk_steps`` warm-up, diffusers ``PNDMScheduler`` (SD-1.x's default).

    Transfer (eq. 9) from t to t' with ᾱ = ᾱ_t, ᾱ' = ᾱ_{t'} (ᾱ_{t'} = ᾱ_final when t' < 0) and
    an ε estimate e:

        φ(x, e, t, t') = √(ᾱ'/ᾱ) x − (ᾱ' − ᾱ) e / (ᾱ √(1 − ᾱ') + √(ᾱ (1 − ᾱ) ᾱ'))

    (a v-output is turned into ε = √ᾱ v + √(1 − ᾱ) x first). Timesteps are the ``leading``
    grid t_0 > ... > t_{N−1} with the second one repeated (N + 1 evaluations, r = ⌊T/N⌋).
    With e_k the model output at evaluation k and x_k the sample:

    - k = 0: x_1 = φ(x_0, e_0, t_0, t_0 − r)   (Euler step; x_0 is kept)
    - k = 1: x_2 = φ(x_0, (e_0 + e_1)/2, t_0, t_0 − r)   (a 2nd-order, Heun-like warm-up)
    - then Adams–Bashforth on the stored e's (e_1 is not stored): with the stored history
      h = [e_0, e_2, e_3, ...], e' = (3h₋₁ − h₋₂)/2, (23h₋₁ − 16h₋₂ + 5h₋₃)/12, then
      (55h₋₁ − 59h₋₂ + 37h₋₃ − 9h₋₄)/24 (eq. 12), x_{k+1} = φ(x_k, e', t_k, t_k − r).

    The carry holds the last three stored outputs, x_0 and the number of steps taken; img2img
    starts mid-schedule with an empty history, as diffusers does. The original PRK warm-up
    (``skip_prk_steps=False``) is not implemented.
    """

    kind: ClassVar[str] = "pndm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"pndm sampler supports prediction_type epsilon or v_prediction, got "
                f"{self.schedule.prediction_type!r}"
            )
        if self.schedule.skip_prk_steps is False:
            raise ValueError(
                "pndm sampler: skip_prk_steps=False (the Runge-Kutta warm-up) is not supported; "
                "SD checkpoints ship skip_prk_steps=True"
            )

    @functools.cached_property
    def _ratio(self) -> int:
        return self.schedule.num_train_timesteps // self.num_inference_steps

    @functools.cached_property
    def timesteps(self) -> np.ndarray:
        s = self.schedule
        base = spaced_timesteps(
            s.num_train_timesteps,
            self.num_inference_steps,
            s.spacing_for(self.kind),
            s.steps_offset,
        )[::-1]  # ascending, as diffusers' _timesteps
        ts = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        return np.ascontiguousarray(ts).astype(np.int64)

    @functools.cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        """φ's coefficients at every evaluation i for (t_i, t_i − r) and, for the warm-up's
        second evaluation, (t_i + r, t_i)."""
        ac = self.schedule.alphas_cumprod.astype(np.float32)
        final = np.float32(1.0) if self.schedule.alpha_to_one_for(self.kind) else ac[0]
        t = self.timesteps.astype(np.int64)

        def coefs(cur: np.ndarray, prev: np.ndarray) -> dict[str, np.ndarray]:
            # float32, in diffusers' order of operations
            a = ac[np.clip(cur, 0, len(ac) - 1)]
            ap = np.where(prev >= 0, ac[np.clip(prev, 0, len(ac) - 1)], final).astype(np.float32)
            b, bp = np.float32(1) - a, np.float32(1) - ap
            denom = a * bp**0.5 + (a * b * ap) ** 0.5
            return {
                "sample": ((ap / a) ** 0.5).astype(np.float32),
                "out": ((ap - a) / denom).astype(np.float32),
                "sqrt_a": (a**0.5).astype(np.float32),
                "sqrt_b": (b**0.5).astype(np.float32),
            }

        main = coefs(t, t - self._ratio)
        warm = coefs(t + self._ratio, t)
        out = {f"main_{k}": v for k, v in main.items()}
        out.update({f"warm_{k}": v for k, v in warm.items()})
        return out

    def init_carry(self, x: Array) -> tuple[Array, Array, Array]:
        """(last three stored outputs [3, ...] newest first, x at the first step, steps taken)."""
        dt = _compute_dtype(x)
        return (
            jnp.zeros((3, *x.shape), dt),
            jnp.zeros(x.shape, dt),
            jnp.zeros((), jnp.int32),
        )

    def step(
        self, i: int | Array, model_output: Array, x: Array, carry: Any, key: Array | None
    ) -> tuple[Array, Any]:
        del key
        dt = _compute_dtype(x)
        xc, e = x.astype(dt), model_output.astype(dt)
        hist, first_x, count = carry
        h1, h2, h3 = hist[0], hist[1], hist[2]
        # Number of stored outputs after this step (the warm-up's second output is not stored).
        stored = jnp.where(count == 0, 1, jnp.minimum(count, 4))
        combo = jnp.select(
            [count == 0, count == 1, stored == 2, stored == 3],
            [e, (e + h1) / 2, (3 * e - h1) / 2, (23 * e - 16 * h1 + 5 * h2) / 12],
            (55 * e - 59 * h1 + 37 * h2 - 9 * h3) / 24,
        )
        warm = count == 1
        sample = jnp.where(warm, first_x, xc)
        tb = self._tables

        def pick(name: str) -> Array:
            return jnp.where(warm, _at(tb[f"warm_{name}"], i, dt), _at(tb[f"main_{name}"], i, dt))

        if self.schedule.prediction_type == "v_prediction":
            combo = pick("sqrt_a") * combo + pick("sqrt_b") * sample
        x_next = pick("sample") * sample - pick("out") * combo
        new_hist = jnp.where(warm, hist, jnp.stack([e, h1, h2]))
        new_first = jnp.where(count == 0, xc, first_x)
        carry = (new_hist, new_first, jnp.minimum(count + 1, 5).astype(jnp.int32))
        return x_next.astype(x.dtype), carry


_SAMPLERS: dict[str, type[Sampler]] = {
    cls.kind: cls
    for cls in (
        DDIMSampler,
        DDPMSampler,
        EulerSampler,
        EulerAncestralSampler,
        DPMSolverPP2MSampler,
        PNDMSampler,
    )
}


def make_sampler(
    kind: str,
    schedule: NoiseSchedule | Mapping[str, Any],
    num_inference_steps: int,
    *,
    eta: float = 0.0,
    **options: Any,
) -> Sampler:
    """Build sampler ``kind`` (one of ``SAMPLER_KINDS``) over ``schedule``.

    ``schedule`` may be a ``NoiseSchedule`` or a diffusers scheduler-config dict. ``eta`` is
    DDIM's η (0 = deterministic DDIM, 1 = DDPM-like noise). Euler accepts ``s_churn``,
    ``s_tmin``, ``s_tmax``, ``s_noise``.
    """
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLER_KINDS}")
    if not isinstance(schedule, NoiseSchedule):
        schedule = NoiseSchedule.from_diffusers_config(schedule)
    if kind == "ddim":
        options["eta"] = float(eta)
    elif eta:
        raise ValueError(f"eta={eta} only applies to the ddim sampler, not {kind!r}")
    cls = _SAMPLERS[kind]
    allowed = {f.name for f in dataclasses.fields(cls)} - {"schedule", "num_inference_steps"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"sampler {kind!r} has no option(s) {sorted(unknown)}; it takes {sorted(allowed)}"
        )
    return cls(schedule=schedule, num_inference_steps=int(num_inference_steps), **options)


def denoise_loop(
    model_fn: ModelFn,
    sampler: Sampler,
    x: Array,
    key: Array | None = None,
    *,
    start_index: int | Array = 0,
    carry: Any = None,
) -> Array:
    """Run steps ``start_index .. num_steps-1`` from ``x`` as one ``lax.fori_loop``.

    At step i: ``out = model_fn(sampler.scale_model_input(x, i), timesteps[i], i)`` and
    ``x, carry = sampler.step(i, out, x, carry, key)``. Jittable as a whole (wrap the caller in
    ``jax.jit``; ``sampler`` is hashable, so it can be a static argument). ``x`` is the initial
    latent: ``init_noise_sigma · z`` for text-to-image, ``sampler.add_noise(x0, z, start_index)``
    for img2img. ``key`` (one key or one per row) is needed by stochastic samplers.
    """
    if sampler.stochastic and key is None:
        raise ValueError(f"sampler {sampler.kind!r} is stochastic here: denoise_loop needs a key")
    if isinstance(start_index, int) and not 0 <= start_index <= sampler.num_steps:
        raise ValueError(f"start_index {start_index} outside [0, {sampler.num_steps}]")
    if carry is None:
        carry = sampler.init_carry(x)
    timesteps = jnp.asarray(sampler.timesteps)

    def body(i: Array, state: tuple[Array, Any]) -> tuple[Array, Any]:
        xi, ci = state
        out = model_fn(sampler.scale_model_input(xi, i), timesteps[i], i)
        if out.shape != xi.shape:
            raise ValueError(
                f"model_fn returned shape {out.shape}, expected the latent shape {xi.shape}"
            )
        return sampler.step(i, out, xi, ci, key)

    x_final, _ = lax.fori_loop(start_index, sampler.num_steps, body, (x, carry))
    return x_final
