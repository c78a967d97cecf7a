"""SD UNet attention through ``jax.nn.dot_product_attention`` (augdiff.sd.attention): the
same outputs as diffusers' own einsum path on the CPU, every attention layer routed, and the
selection honoured. (tests/parity/test_sd_parity.py checks the default path against diffusers'
PyTorch UNet.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffusers.models.attention_flax import FlaxAttention

from augdiff.sd import attention, loading, tiny, unclip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_attn")
    return {k: loading.load_sd(tiny.make_tiny_sd(root / k, kind=k, seed=3, formats=("flax",)))
            for k in ("txt2img", "unclip")}


def _inputs(comps, n=2, tokens=7, seed=0):
    rng = np.random.default_rng(seed)
    s = 8
    x = jnp.asarray(rng.standard_normal((n, comps.unet.in_channels, s, s)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((n, tokens, comps.unet.cross_attention_dim)),
                      jnp.float32)
    return x, jnp.asarray([10, 700]), ctx


def _run(comps, params, impl, class_input=None):
    x, t, ctx = _inputs(comps)
    with attention.use(impl):  # jit traces here, under the implementation in force
        fn = jax.jit(lambda p, x, t, c, k: unclip.apply_unet(comps, p, x, t, c, k))
        return np.asarray(fn(params, x, t, ctx, class_input))


@pytest.mark.parametrize("impl", ["xla"])
def test_parity_with_diffusers_attention(models, impl):
    comps, params = models["txt2img"]
    want = _run(comps, params, "diffusers")
    got = _run(comps, params, impl)
    assert np.abs(want).max() > 1e-2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_parity_unclip_path(models):
    comps, params = models["unclip"]
    cls = jnp.asarray(np.random.default_rng(1).standard_normal(
        (2, params["class_embedding"]["linear_1"]["kernel"].shape[0])), jnp.float32)
    want = _run(comps, params, "diffusers", cls)
    got = _run(comps, params, "xla", cls)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_every_attention_layer_is_routed(models, monkeypatch):
    comps, params = models["txt2img"]
    calls = []
    real = jax.nn.dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append((q.shape, k.shape, kw.get("scale")))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    _run(comps, params, "xla")
    # Count the FlaxAttention modules of the tiny UNet: two (self + cross) per transformer.
    n_attn = []

    def count(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, FlaxAttention):
            n_attn.append(context.module.name)
        return next_fun(*args, **kwargs)

    import flax.linen as nn

    x, t, ctx = _inputs(comps)
    with attention.use("diffusers"), nn.intercept_methods(count):
        comps.unet.apply({"params": params["unet"]}, x, t, ctx)
    assert len(n_attn) >= 2 and len(calls) == len(n_attn)
    # cross-attention layers see the 7 text tokens as keys; scale is 1/sqrt(head dim)
    assert any(k[1] == 7 for _, k, _ in calls)
    assert all(abs(s - q[-1] ** -0.5) < 1e-12 for q, _, s in calls)
    calls.clear()
    _run(comps, params, "diffusers")
    assert calls == []
    _run(comps, params, "auto")  # on the CPU: diffusers' einsums (measured faster there)
    assert calls == []


def test_bad_implementation(monkeypatch):
    monkeypatch.setenv("AUGDIFF_SD_ATTENTION", "flash9")
    with pytest.raises(ValueError, match="AUGDIFF_SD_ATTENTION"):
        attention.implementation()
    with pytest.raises(ValueError, match="choose one of"):
        with attention.use("nope"):
            pass


@pytest.mark.parametrize("d", [40, 160])
def test_pallas_flash_attention_matches_the_definition(d):
    """The Pallas TPU kernel (run in Pallas' TPU interpret mode on the CPU), including a head
    wider than its 128 lanes (zero-padded): softmax(q kᵀ / √d) v written out here."""
    from jax.experimental.pallas import tpu as pltpu

    ks = jax.random.split(jax.random.PRNGKey(d), 3)
    q, k, v = (jax.random.normal(kk, (1, 256, 2, d), jnp.float32) for kk in ks)  # [B, T, H, d]
    with pltpu.force_tpu_interpret_mode():
        got = jax.jit(lambda q, k, v: attention.flash_attention(q, k, v, d**-0.5))(q, k, v)
    scores = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64), np.asarray(k, np.float64))
    p = np.exp(scores / np.sqrt(d) - (scores / np.sqrt(d)).max(-1, keepdims=True))
    want = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), np.asarray(v, np.float64))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_pallas_unet_matches_diffusers(models):
    """The UNet with 'pallas' attention at 16² latents (256-token self-attention in the Pallas
    kernel, the 8² level and the cross-attention in XLA's) equals diffusers' own path."""
    from jax.experimental.pallas import tpu as pltpu

    comps, params = models["txt2img"]
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, comps.unet.in_channels, 16, 16)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 7, comps.unet.cross_attention_dim)), jnp.float32)
    t = jnp.asarray([10, 700])

    def run(impl):
        with attention.use(impl):
            fn = jax.jit(lambda p, x, t, c: unclip.apply_unet(comps, p, x, t, c))
            return np.asarray(fn(params, x, t, ctx))

    want = run("diffusers")
    with pltpu.force_tpu_interpret_mode():
        got = run("pallas")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
