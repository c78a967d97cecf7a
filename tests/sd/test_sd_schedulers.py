"""augdiff.sd.schedulers / guidance: step-by-step parity with diffusers' PyTorch schedulers,
closed-form properties, the jitted loop, img2img, guidance maths and input errors.

Parity tests feed the SAME sequence of random model outputs (and, for stochastic samplers, the
same noise, drawn in JAX by ``step_noise`` and handed to torch through ``variance_noise`` or a
patched ``randn_tensor``) to both implementations. Samplers are elementwise, so both sides use
the same NHWC arrays.

Tolerance: both sides run in float32; with random ε-outputs the latent grows to |x| ~ 50-70 at
high noise (x̂_0 = (x - √(1-ᾱ) ε)/√ᾱ with √ᾱ ≈ 0.07), where one float32 ulp is ~4e-6. The bound
is therefore max|Δ| ≤ 2e-6 · max(5, max|x_ref|): exactly 1e-5 for O(1) latents, and ~16 ulps
of the sample scale beyond that.
"""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augdiff.sd import guidance as G
from augdiff.sd import schedulers as S

SHAPE = (2, 8, 8, 4)  # NHWC latents; the samplers are elementwise

SD1 = {  # stable-diffusion-v1-5 scheduler_config.json (PNDM), as shipped: no timestep_spacing
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD2_V = dict(SD1, prediction_type="v_prediction", timestep_spacing="leading")

# name -> (config, num_inference_steps)
CONFIGS = {
    "sd1_default_50": (SD1, 50),
    "sd2_v_leading_20": (SD2_V, 20),
    "eps_trailing_10": (dict(SD1, timestep_spacing="trailing"), 10),
    "v_linspace_15": (dict(SD1, prediction_type="v_prediction", timestep_spacing="linspace"), 15),
    "linear_sample_leading_12": (
        {
            "beta_schedule": "linear",
            "prediction_type": "sample",
            "timestep_spacing": "leading",
            "clip_sample": False,
        },
        12,
    ),
    "cosine_clip_eps_10": (
        {"beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "timestep_spacing": "linspace"},
        10,
    ),
}
KINDS = ("ddim", "ddpm", "euler", "euler_ancestral", "dpmpp_2m", "pndm")
TORCH_CLASSES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}


def _rejected_by_both(kind: str, cfg: dict) -> bool:
    """Euler-ancestral and PNDM with ``prediction_type='sample'``: diffusers raises, so must we."""
    return kind in ("euler_ancestral", "pndm") and cfg.get("prediction_type") == "sample"


def _with_plms(kind: str, cfg: dict) -> dict:
    """PNDM runs with SD's ``skip_prk_steps=True`` (PLMS warm-up) on both sides."""
    return dict(cfg, skip_prk_steps=True) if kind == "pndm" else cfg


def _bound(ref: np.ndarray) -> float:
    return 2e-6 * max(5.0, float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def torch_ref():
    torch = pytest.importorskip("torch")
    import diffusers

    return types.SimpleNamespace(torch=torch, diffusers=diffusers)


def _torch_scheduler(torch_ref, kind: str, cfg: dict, n: int):
    cls = getattr(torch_ref.diffusers, TORCH_CLASSES[kind])
    sched = cls.from_config(cfg)
    sched.set_timesteps(n)
    return sched


class _NoiseFeed:
    """Replaces diffusers' ``randn_tensor`` so torch's step uses our JAX-drawn noise."""

    def __init__(self, torch):
        self.torch = torch
        self.value = None

    def __call__(self, shape, *args, **kwargs):
        assert tuple(shape) == tuple(self.value.shape), (shape, self.value.shape)
        return self.value


def _patch_noise(monkeypatch, torch_ref) -> _NoiseFeed:
    feed = _NoiseFeed(torch_ref.torch)
    import diffusers.schedulers.scheduling_ddpm as m_ddpm
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as m_ea
    import diffusers.schedulers.scheduling_euler_discrete as m_euler

    for mod in (m_ddpm, m_ea, m_euler):
        monkeypatch.setattr(mod, "randn_tensor", feed)
    return feed


def _run_parity(torch_ref, monkeypatch, sampler, ref, *, start=0, x0=None, seed=0, eta=0.0):
    """Step both from the same start; return the per-step max |Δ| ratio to the bound."""
    torch = torch_ref.torch
    feed = _patch_noise(monkeypatch, torch_ref)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 100)
    step = jax.jit(sampler.step)  # traced i: the same path denoise_loop takes
    if start:  # img2img: start from add_noise at the start step, as the pipelines do
        noise = rng.standard_normal(SHAPE).astype(np.float32)
        t0 = ref.timesteps[start : start + 1].repeat(SHAPE[0])
        x_t = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), t0)
        x_j = sampler.add_noise(jnp.asarray(x0), jnp.asarray(noise), start)
    else:
        init = rng.standard_normal(SHAPE).astype(np.float32)
        x_t = torch.from_numpy(init) * ref.init_noise_sigma
        x_j = jnp.asarray(init) * sampler.init_noise_sigma
    np.testing.assert_allclose(np.asarray(x_j), x_t.numpy(), rtol=0, atol=_bound(x_t.numpy()))
    carry = sampler.init_carry(x_j)
    worst = 0.0
    for i in range(start, sampler.num_steps):
        t = ref.timesteps[i]
        assert float(t) == float(sampler.timesteps[i])
        scaled_t = ref.scale_model_input(x_t, t)
        scaled_j = sampler.scale_model_input(x_j, i)
        scaled_t = scaled_t.numpy()
        worst = max(worst, np.abs(np.asarray(scaled_j) - scaled_t).max() / _bound(scaled_t))
        out = rng.standard_normal(SHAPE).astype(np.float32)
        z = np.asarray(S.step_noise(key, i, SHAPE))
        feed.value = torch.from_numpy(z.copy())
        kwargs = {"eta": eta, "variance_noise": feed.value} if sampler.kind == "ddim" else {}
        x_t = ref.step(torch.from_numpy(out), t, x_t, **kwargs).prev_sample
        x_j, carry = step(i, jnp.asarray(out), x_j, carry, key)
        d = np.abs(np.asarray(x_j) - x_t.numpy()).max()
        worst = max(worst, d / _bound(x_t.numpy()))
        assert d <= _bound(x_t.numpy()), (
            f"{sampler.kind} step {i} (t={t}): max|Δ|={d:.3g} > {_bound(x_t.numpy()):.3g}"
        )
    return worst


# ---------------------------------------------------------------------------------------------
# Parity with diffusers (torch)
# ---------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_tables_match_diffusers(torch_ref, beta_schedule):
    cfg = dict(SD1, beta_schedule=beta_schedule)
    ours = S.NoiseSchedule.from_diffusers_config(cfg)
    ref = torch_ref.diffusers.DDPMScheduler.from_config(cfg)
    # float64 derivation vs diffusers' float32 linspace: agree to a few float32 ulps
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=2e-6, atol=0)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=0)
    assert ours.alphas_cumprod.dtype == np.float32
    assert np.all(np.diff(ours.alphas_cumprod) < 0) and 0 < ours.alphas_cumprod[-1] < 1


@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
def test_timesteps_and_init_sigma_match_diffusers(torch_ref, kind):
    for spacing in (None, "leading", "trailing", "linspace"):
        for offset in (0, 1):
            for n in (1, 7, 10, 25, 50, 999):
                cfg = dict(SD1, steps_offset=offset)
                if spacing:
                    cfg["timestep_spacing"] = spacing
                ref = _torch_scheduler(torch_ref, kind, cfg, n)
                sampler = S.make_sampler(kind, cfg, n)
                ts = ref.timesteps.numpy()
                assert sampler.timesteps.dtype == ts.dtype, (kind, spacing, n)
                np.testing.assert_array_equal(
                    sampler.timesteps, ts, err_msg=f"{kind} {spacing} {n}"
                )
                assert sampler.num_steps == len(ts)
                np.testing.assert_allclose(
                    sampler.init_noise_sigma, float(ref.init_noise_sigma), rtol=2e-6
                )


@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_step_parity_with_diffusers(torch_ref, monkeypatch, kind, config):
    cfg, n = CONFIGS[config]
    cfg = _with_plms(kind, cfg)
    if _rejected_by_both(kind, cfg):
        with pytest.raises(ValueError, match="sample"):
            S.make_sampler(kind, cfg, n)
        ref = _torch_scheduler(torch_ref, kind, cfg, n)
        x = torch_ref.torch.zeros((1, 4, 2, 2))
        with pytest.raises((ValueError, NotImplementedError), match="sample"):
            ref.step(x, ref.timesteps[0], x)  # diffusers refuses at the first step
        return
    ref = _torch_scheduler(torch_ref, kind, cfg, n)
    sampler = S.make_sampler(kind, cfg, n)
    worst = _run_parity(torch_ref, monkeypatch, sampler, ref, seed=sorted(CONFIGS).index(config))
    assert worst <= 1.0


@pytest.mark.torch
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_parity_with_diffusers(torch_ref, monkeypatch, eta):
    for config in ("sd1_default_50", "sd2_v_leading_20"):
        cfg, n = CONFIGS[config]
        ref = _torch_scheduler(torch_ref, "ddim", cfg, n)
        sampler = S.make_sampler("ddim", cfg, n, eta=eta)
        assert sampler.stochastic
        _run_parity(torch_ref, monkeypatch, sampler, ref, eta=eta)


@pytest.mark.torch
def test_euler_churn_parity_with_diffusers(torch_ref, monkeypatch):
    cfg, n = CONFIGS["sd1_default_50"]
    churn = dict(s_churn=20.0, s_tmin=0.5, s_tmax=10.0, s_noise=1.003)
    ref = _torch_scheduler(torch_ref, "euler", cfg, n)
    sampler = S.make_sampler("euler", cfg, n, **churn)
    assert sampler.stochastic
    ref_step = ref.step

    def step_with_churn(*args, **kwargs):
        return ref_step(*args, **kwargs, **churn)

    monkeypatch.setattr(ref, "step", step_with_churn)
    _run_parity(torch_ref, monkeypatch, sampler, ref)


@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_start_add_noise_and_steps_match_diffusers(torch_ref, monkeypatch, kind, strength):
    from diffusers import StableDiffusionImg2ImgPipeline

    for config in ("sd1_default_50", "sd2_v_leading_20"):
        cfg, n = CONFIGS[config]
        ref = _torch_scheduler(torch_ref, kind, cfg, n)
        sampler = S.make_sampler(kind, cfg, n)
        # diffusers' own get_timesteps on a stand-in pipeline object
        ref_ts, ref_n = StableDiffusionImg2ImgPipeline.get_timesteps(
            types.SimpleNamespace(scheduler=ref), n, strength, "cpu"
        )
        start = sampler.img2img_start(strength)
        np.testing.assert_array_equal(sampler.timesteps[start:], ref_ts.numpy())
        # diffusers' count ignores PNDM's repeated warm-up timestep (N + 1 evaluations)
        assert sampler.num_steps - start == ref_n + (kind == "pndm")
        x0 = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
        _run_parity(torch_ref, monkeypatch, sampler, ref, start=start, x0=x0, seed=3)


@pytest.mark.torch
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_pndm_sd14_default_100_steps_parity_with_diffusers(torch_ref, monkeypatch, pred):
    """SD-1.4's own scheduler (PNDMScheduler, skip_prk_steps, 100 steps): 101 evaluations
    with the repeated second timestep and the PLMS warm-up, step for step."""
    cfg = dict(SD1, prediction_type=pred)
    ref = _torch_scheduler(torch_ref, "pndm", cfg, 100)
    sampler = S.make_sampler("pndm", cfg, 100)
    assert sampler.num_steps == 101 and list(sampler.timesteps[:3]) == [991, 981, 981]
    assert sampler.timesteps[-1] == 1
    assert _run_parity(torch_ref, monkeypatch, sampler, ref, seed=11) <= 1.0


def test_pndm_plms_closed_form_on_a_linear_model_output():
    """PLMS from the paper's equations (PNDM eqs. 9, 12), written here: with e_k ≡ c the
    multistep combinations all reduce to c, so every step is one eq.-9 transfer with e = c."""
    sampler = S.make_sampler("pndm", SD1, 10)
    ac = np.asarray(sampler.schedule.alphas_cumprod, np.float64)
    final = ac[0]  # set_alpha_to_one = False
    r = 100
    c = 0.3
    x = np.full(SHAPE, 0.7)
    xj = jnp.asarray(x, jnp.float32)
    carry = sampler.init_carry(xj)

    def phi(x, e, t, tp):
        a, ap = ac[t], (ac[tp] if tp >= 0 else final)
        return np.sqrt(ap / a) * x - (ap - a) * e / (
            a * np.sqrt(1 - ap) + np.sqrt(a * (1 - a) * ap)
        )

    x0 = x
    ts = sampler.timesteps
    for i in range(sampler.num_steps):
        xj, carry = sampler.step(i, jnp.full(SHAPE, c, jnp.float32), xj, carry, None)
        if i == 1:  # warm-up: from x_0 again, t_0 -> t_0 - r
            x = phi(x0, c, int(ts[0]), int(ts[0]) - r)
        else:
            x = phi(x, c, int(ts[i]), int(ts[i]) - r)
        np.testing.assert_allclose(np.asarray(xj), x, rtol=2e-5, atol=1e-6)


@pytest.mark.torch
def test_rescale_noise_cfg_matches_diffusers(torch_ref):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    rng = np.random.default_rng(0)
    g = rng.standard_normal(SHAPE).astype(np.float32) * 3
    c = rng.standard_normal(SHAPE).astype(np.float32)
    for phi in (0.0, 0.7, 1.0):
        ref = rescale_noise_cfg(torch_ref.torch.from_numpy(g), torch_ref.torch.from_numpy(c), phi)
        ours = G.rescale_noise_cfg(jnp.asarray(g), jnp.asarray(c), phi)
        np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Closed forms and properties (no torch)
# ---------------------------------------------------------------------------------------------


def _exact_denoiser(sampler: S.Sampler, x0_star: jax.Array):
    """The model output of a perfect denoiser for the single data point ``x0_star``.

    At step i the UNet input is the VP point x_vp = √ᾱ x0* + √(1-ᾱ) ε; the perfect ε-model
    returns ε = (x_vp - √ᾱ x0*)/√(1-ᾱ), the v-model α ε - σ x0*, the x0-model x0*.
    """
    pred = sampler.schedule.prediction_type
    ac = sampler.schedule.alphas_cumprod

    def model_fn(x_in, t, i):
        # ᾱ at a possibly fractional t (Euler): the VP level of σ_i, 1/(σ_i² + 1)
        if isinstance(sampler, S.EulerSampler | S.EulerAncestralSampler):
            sig = jnp.asarray(sampler.sigmas)[i]
            a = 1.0 / (sig**2 + 1)
        else:
            a = jnp.asarray(ac)[t.astype(jnp.int32)]
        alpha, sigma = jnp.sqrt(a), jnp.sqrt(1 - a)
        eps = (x_in - alpha * x0_star) / sigma
        if pred == "epsilon":
            return eps
        if pred == "v_prediction":
            return alpha * eps - sigma * x0_star
        return jnp.broadcast_to(x0_star, x_in.shape)

    return model_fn


@pytest.mark.parametrize("kind", ["ddim", "euler", "dpmpp_2m"])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_deterministic_samplers_recover_the_data_point_of_a_perfect_denoiser(kind, pred):
    """With D(x) ≡ x0*, DDIM(η=0, ᾱ_final=1), Euler and DPM-Solver++ all end exactly at x0*."""
    cfg = dict(SD1, prediction_type=pred, set_alpha_to_one=True)
    sampler = S.make_sampler(kind, cfg, 12)
    x0_star = jax.random.normal(jax.random.key(1), SHAPE) * 0.5
    x_T = jax.random.normal(jax.random.key(2), SHAPE) * sampler.init_noise_sigma
    out = jax.jit(lambda x: S.denoise_loop(_exact_denoiser(sampler, x0_star), sampler, x))(x_T)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0_star), atol=2e-4)


def test_ddpm_posterior_mean_and_variance_closed_form():
    """One DDPM step with a perfect ε-model is the Gaussian posterior q(x_t' | x_t, x0*)."""
    sampler = S.make_sampler("ddpm", SD1, 10)
    i = 3
    t, tp = int(sampler.timesteps[i]), int(sampler.timesteps[i + 1])
    ac = sampler.schedule.alphas_cumprod.astype(np.float64)
    a_t, a_p = ac[t], ac[tp]
    beta = 1 - a_t / a_p
    x0 = np.full(SHAPE, 0.3, np.float32)
    xt = np.full(SHAPE, -0.2, np.float32)
    eps = (xt - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    step = jax.vmap(lambda k: sampler.step(i, jnp.asarray(eps[:1]), jnp.asarray(xt[:1]), (), k)[0])
    samples = np.asarray(step(keys)).reshape(n, -1)[:, 0]
    mean = np.sqrt(a_p) * beta / (1 - a_t) * 0.3 + np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t) * -0.2
    std = np.sqrt((1 - a_p) / (1 - a_t) * beta)
    assert abs(samples.mean() - mean) < 4 * std / np.sqrt(n)
    assert abs(samples.std() / std - 1) < 0.03


def test_euler_ancestral_noise_levels_compose_to_the_next_sigma():
    """σ_down² + σ_up² = σ_{i+1}², and σ_up = 0 on the last step (deterministic finish)."""
    sampler = S.make_sampler("euler_ancestral", SD1, 30)
    up = sampler._tables["sigma_up"].astype(np.float64)
    down = sampler._tables["sigma_down"].astype(np.float64)
    np.testing.assert_allclose(
        up**2 + down**2, sampler.sigmas[1:].astype(np.float64) ** 2, rtol=1e-5
    )
    assert up[-1] == 0 and down[-1] == 0
    assert np.all(down[:-1] < sampler.sigmas[1:-1])


@pytest.mark.parametrize("kind", KINDS)
def test_denoise_loop_under_jit_equals_python_loop(kind):
    cfg, n = CONFIGS["sd2_v_leading_20"]
    sampler = S.make_sampler(kind, cfg, 8)

    def model_fn(x_in, t, i):  # any smooth function of (x, t, i)
        return jnp.tanh(x_in) * 0.7 + 1e-3 * t.astype(jnp.float32) - 0.01 * i

    key = jax.random.key(5)
    x = jax.random.normal(jax.random.key(6), SHAPE) * sampler.init_noise_sigma
    for start in (0, 3):
        looped = jax.jit(lambda x, k, s: S.denoise_loop(model_fn, sampler, x, k, start_index=s))(
            x, key, jnp.int32(start)
        )
        ref, carry = x, sampler.init_carry(x)
        for i in range(start, sampler.num_steps):
            out = model_fn(sampler.scale_model_input(ref, i), jnp.asarray(sampler.timesteps[i]), i)
            ref, carry = sampler.step(i, out, ref, carry, key)
        np.testing.assert_allclose(np.asarray(looped), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_per_example_keys_make_rows_independent_of_the_batch():
    """A row's result depends only on its own key, not on which batch it was sampled in."""
    sampler = S.make_sampler("euler_ancestral", SD1, 6)
    keys = jax.vmap(lambda j: jax.random.fold_in(jax.random.key(9), j))(jnp.arange(3))
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 4)) * sampler.init_noise_sigma

    def model_fn(x_in, t, i):
        return 0.5 * x_in

    run = jax.jit(lambda x, k: S.denoise_loop(model_fn, sampler, x, k))
    batch = np.asarray(run(x, keys))
    for j in range(3):
        single = np.asarray(run(x[j : j + 1], keys[j : j + 1]))
        np.testing.assert_allclose(batch[j : j + 1], single, rtol=1e-6, atol=1e-6)
    assert not np.allclose(batch[0], batch[1])
    # the row noise is exactly N(0, I) from fold_in(key_j, i)
    z = S.step_noise(keys, 2, (3, 4, 4, 4))
    np.testing.assert_array_equal(
        np.asarray(z[1]), np.asarray(jax.random.normal(jax.random.fold_in(keys[1], 2), (4, 4, 4)))
    )


def test_samplers_are_hashable_static_jit_arguments():
    a = S.make_sampler("dpmpp_2m", SD1, 10)
    b = S.make_sampler("dpmpp_2m", dict(SD1), 10)
    assert a == b and hash(a) == hash(b)
    assert a != S.make_sampler("dpmpp_2m", SD1, 11)
    f = jax.jit(lambda s, x: s.add_noise(x, jnp.ones_like(x), 0), static_argnums=0)
    x = jnp.zeros((1, 2, 2, 4))
    np.testing.assert_allclose(np.asarray(f(a, x)), np.asarray(f(b, x)))
    # DPM add_noise at step i is α_i x0 + s_i z with α_i² + s_i² = 1
    alpha, s = a._tables["alpha"][0], a._tables["sigma_vp"][0]
    np.testing.assert_allclose(np.asarray(f(a, x)), s, rtol=1e-6)
    np.testing.assert_allclose(alpha**2 + s**2, 1.0, rtol=1e-6)


def test_bf16_model_output_keeps_the_latent_dtype_and_precision():
    sampler = S.make_sampler("dpmpp_2m", SD1, 10)
    x = jax.random.normal(jax.random.key(0), SHAPE)
    out = jax.random.normal(jax.random.key(1), SHAPE)
    y32, _ = sampler.step(0, out, x, sampler.init_carry(x), None)
    y16, _ = sampler.step(0, out.astype(jnp.bfloat16), x, sampler.init_carry(x), None)
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16), np.asarray(y32), atol=0.05)


def test_from_diffusers_config_reads_file_and_folder(tmp_path):
    (tmp_path / "scheduler").mkdir()
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(SD2_V))
    a = S.from_diffusers_config(path)
    b = S.NoiseSchedule.from_diffusers_config(tmp_path / "scheduler")
    assert a == b
    assert a.prediction_type == "v_prediction" and a.steps_offset == 1
    assert a.clip_sample is False and a.set_alpha_to_one is False
    assert a.spacing_for("euler") == "leading"
    # a missing key takes the class default, like XScheduler.from_config
    assert S.NoiseSchedule.from_diffusers_config(SD1).spacing_for("euler") == "linspace"
    assert S.NoiseSchedule.from_diffusers_config(SD1).spacing_for("ddim") == "leading"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: S.make_sampler("heun", SD1, 10), "unknown sampler 'heun'"),
        (lambda: S.make_sampler("euler", SD1, 10, eta=0.5), "eta=0.5 only applies to the ddim"),
        (lambda: S.make_sampler("ddim", SD1, 10, s_churn=1.0), "no option"),
        (lambda: S.make_sampler("ddim", SD1, 0), "num_inference_steps must be in"),
        (lambda: S.make_sampler("ddim", SD1, 1001), "num_inference_steps must be in"),
        (lambda: S.make_sampler("ddim", SD1, 10, eta=-1.0), "eta must be >= 0"),
        (
            lambda: S.make_sampler("pndm", dict(SD1, skip_prk_steps=False), 10),
            "skip_prk_steps=False",
        ),
        (
            lambda: S.make_sampler("pndm", dict(SD1, prediction_type="sample"), 10),
            "epsilon or v_prediction",
        ),
        (lambda: S.NoiseSchedule(beta_schedule="sigmoid"), "beta_schedule 'sigmoid'"),
        (lambda: S.NoiseSchedule(prediction_type="flow"), "prediction_type 'flow'"),
        (lambda: S.NoiseSchedule(timestep_spacing="even"), "timestep_spacing 'even'"),
        (lambda: S.NoiseSchedule(variance_type="learned"), "variance_type 'learned'"),
        (
            lambda: S.from_diffusers_config(dict(SD1, use_karras_sigmas=True)),
            "use_karras_sigmas=True is not supported",
        ),
        (
            lambda: S.from_diffusers_config(dict(SD1, thresholding=True)),
            "thresholding=True is not supported",
        ),
        (lambda: S.from_diffusers_config("/nonexistent/dir"), "scheduler config not found"),
        (lambda: S.make_sampler("ddim", SD1, 10).img2img_start(1.5), "strength must be in"),
        (lambda: S.make_sampler("ddim", SD1, 10).img2img_start(0.05), "leaves no denoising"),
        (
            lambda: S.denoise_loop(
                lambda x, t, i: x, S.make_sampler("ddpm", SD1, 3), jnp.zeros(SHAPE)
            ),
            "needs a key",
        ),
        (
            lambda: S.step_noise(jax.random.split(jax.random.key(0), 3), 0, SHAPE),
            "batch of 3 keys",
        ),
    ],
)
def test_bad_input_fails_with_a_clear_message(call, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------


def test_cfg_and_pix2pix_guidance_closed_forms():
    k = jax.random.split(jax.random.key(0), 3)
    u, c, m = (jax.random.normal(kk, SHAPE) for kk in k)
    np.testing.assert_allclose(G.cfg(u, c, 1.0), c, atol=1e-6)
    np.testing.assert_allclose(G.cfg(u, c, 0.0), u, atol=1e-6)
    np.testing.assert_allclose(G.cfg(u, c, 7.5), u + 7.5 * (c - u), atol=1e-5)
    # InstructPix2Pix: s_T = s_I = 1 gives the fully conditional model; s_T = 0 image-only CFG
    full, img = c, m
    np.testing.assert_allclose(G.instruct_pix2pix_guidance(full, img, u, 1.0, 1.0), full, atol=1e-5)
    np.testing.assert_allclose(
        G.instruct_pix2pix_guidance(full, img, u, 0.0, 1.5), G.cfg(u, img, 1.5), atol=1e-5
    )
    np.testing.assert_allclose(
        G.instruct_pix2pix_guidance(full, img, u, 4.0, 1.5),
        u + 4.0 * (full - img) + 1.5 * (img - u),
        atol=1e-5,
    )


def test_branch_stacking_pairs_every_example_with_its_branches():
    """One denoiser call sees row ``b·n + k`` = branch ``k`` of example ``b``: the latent copies
    (``repeat_branches``) line up with the stacked conditionings (``concat_branches``), and
    ``split_branches`` hands back each branch in its order."""
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)  # example b: [2b, 2b + 1]
    u, c = x + 100.0, x + 200.0
    np.testing.assert_array_equal(G.repeat_branches(x, 2), G.concat_branches(x, x))
    stacked = np.asarray(G.concat_branches(u, c))
    np.testing.assert_array_equal(stacked, np.stack([u[0], c[0], u[1], c[1], u[2], c[2]]))
    uu, cc = G.split_branches(stacked, 2)
    np.testing.assert_array_equal(uu, u)
    np.testing.assert_array_equal(cc, c)
    a, b, d = G.split_branches(G.concat_branches(u, c, x), 3)
    np.testing.assert_array_equal(d, x)


def test_rescale_noise_cfg_matches_per_example_std():
    rng = np.random.default_rng(1)
    g = rng.standard_normal(SHAPE).astype(np.float32) * np.array([2.0, 5.0]).reshape(2, 1, 1, 1)
    c = rng.standard_normal(SHAPE).astype(np.float32)
    full = np.asarray(G.rescale_noise_cfg(jnp.asarray(g), jnp.asarray(c), 1.0))
    for b in range(2):
        np.testing.assert_allclose(full[b].std(ddof=1), c[b].std(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(G.rescale_noise_cfg(g, c, 0.0)), g, atol=1e-6)
