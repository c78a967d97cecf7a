"""Online sources for classifier training: generated rows and DiffuseMix pairs made on device.

:func:`build` is what a caller of :func:`augdiff.train.classifier.train_and_evaluate` hands in
as ``online=``: from ``(config, real, synthetic, mesh)`` it builds the on-device transform
``config.online.kind = 'diffusemix'`` asks for (:class:`OnlinePairs`, :func:`make_online`) and
the generator source of ``config.synthetic.online`` (:class:`OnlineEDM`, :class:`OnlineEdit`,
:func:`make_online_source`). The trainer itself knows neither method; the generic parts it
shares with these sources (row count, provenance spill) are :mod:`augdiff.data.online`.

Online synthetic data: an EDM generator sampling the synthetic share of each batch on device.

``synthetic.online`` in a classifier config replaces (or joins) a synthetic store by a
class-conditional EDM checkpoint (``augdiff train-diffusion``) sampled while the classifier
trains (the capability seed 000 §4.6 and seed 003 §4.1 ask for: fresh synthetic images during
training instead of a dataset written once).

Per train step ``s`` with batch ``B`` and synthetic rows ``m = round(share · B)``, the loader
gives ``B − m`` real rows and :meth:`OnlineEDM.complete` appends ``m`` synthetic rows on device.

- Fresh mode (``refresh_every = 1``, ``buffer_size = m``): row ``j`` of step ``s`` is
  ``Heun(x_T = σ_max · n, c)`` (EDM Algorithm 1, :func:`augdiff.edm.samplers.heun_sampler`)
  with ``n ~ N(0, I)`` from ``fold_in(fold_in(fold_in(K, 0), s), j)`` and the class
  ``c ~ Categorical(p)`` from ``fold_in(fold_in(fold_in(K, 1), s), j)``, ``K = PRNGKey(seed)``.
- Replay mode (``refresh_every = R > 1``): a buffer of ``buffer_size`` rows is regenerated at
  refresh ``r = ⌊s / R⌋`` exactly as above with ``r`` in place of ``s``; step ``s`` takes the
  buffer rows ``perm(fold_in(fold_in(K, 2), s))[:m]``. The buffer is a pure function of
  ``(seed, r)``, so a resumed run re-derives it instead of checkpointing it.
  Generator cost per step: ``buffer_size / R`` images of ``NFE = 2N − 1`` network calls.

Every synthetic image is thus a pure function of ``(seed, step or refresh, row)``: the same on
1 or 8 devices, after a kill and resume, whatever the batch layout. Images are quantised to
uint8 as a store would hold them (:func:`augdiff.data.pixels.signed_to_uint8`), so online and
offline rows take the same path through the train step.

The edit generator online (``kind = 'edit'``, :class:`OnlineEdit`): fresh EDM SDEdit edits of
the step's real rows made into DiffuseMix hybrids with an online mask (seed 000 §4.6), also a
pure function of (seed, step, row) and the batch's real images.

Provenance (``spill_every = N > 0``): every N-th synthetic row the classifier saw (global row
``s · m + j ≡ 0 mod N``) is written to a synthetic store with its seed, step, row, label and
source fields, committed at every checkpoint, so ``augdiff inspect`` / ``export`` read it and
a resumed run's store equals the uninterrupted run's.

Cost knob: generator work per step is ``buffer_size / R`` images × ``NFE`` network calls
(``benchmarks/bench_online.py`` measures FLOPs and the share of the step; ``run.json``
records ``generator_s`` and ``generator_share`` of every run). Refreshes run in line: JAX's
asynchronous dispatch queues a refresh behind the previous train step, but there is no
separate stream or double buffer overlapping the two.

Class balance ``p`` (``synthetic.online.balance``): ``uniform`` (``p_c = 1/C``) or ``balance``
(long-tail balancing as in augmented conditioning: ``p_c ∝ g_c = max(max_k n_k − n_c, 0)``,
:func:`augdiff.methods.augcond.generation_counts`; uniform when the real split is balanced).

Online DiffuseMix pairs (``online.kind = 'diffusemix'``, seed 000 §4.6): each synthetic row of
an edits store is mixed on device with its parent real image, masks (and λ, fractals) redrawn
every time the pair is seen (:class:`OnlinePairs`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from augdiff import distributed
from augdiff.config import ConfigError
from augdiff.data.online import Spill, online_config, online_rows
from augdiff.data.pixels import signed_to_uint8, to_signed
from augdiff.edm.edit import make_edit_fn
from augdiff.edm.model import open_generator
from augdiff.edm.sampling import make_sample_fn
from augdiff.methods import hybrids
from augdiff.methods.augcond import generation_counts
from augdiff.methods.diffusemix import fractal_bank_from_config, hybrid_spec
from augdiff.methods.edits import generation_seed, run_keys

BALANCES = ("uniform", "balance")


def class_probs(balance: str, class_counts: np.ndarray) -> np.ndarray:
    """Class probabilities ``p`` of the synthetic rows (see the module docstring)."""
    n = np.asarray(class_counts, np.int64)
    if balance == "uniform":
        return np.full(len(n), 1.0 / len(n))
    if balance == "balance":
        g = generation_counts(n, "balance").astype(np.float64)
        return g / g.sum() if g.sum() > 0 else np.full(len(n), 1.0 / len(n))
    raise ConfigError(f"synthetic.online.balance {balance!r} unknown; choose from {BALANCES}")


@dataclasses.dataclass
class OnlineEDM(Spill):
    """A class-conditional EDM sampled into the synthetic share of every batch (module doc).

    ``net_apply``/``params``: the raw network and its (EMA) parameters (replicated on
    ``mesh``); ``rows`` = ``m``; ``num_steps`` = Heun steps ``N`` (``NFE = 2N − 1``).
    """

    net_apply: Callable[..., jax.Array]
    params: Any
    edm_cfg: Any
    image_shape: tuple[int, int, int]
    probs: np.ndarray
    rows: int
    mesh: Mesh
    seed: int = 0
    num_steps: int = 10
    refresh_every: int = 1
    buffer_size: int = 0
    label_weight: float = 1.0
    mode: str = "dm"
    num_sources: int = 1
    classes: tuple[int, ...] = ()
    timed: bool = True
    spill_every: int = 0
    spill_store: str = ""
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.refresh_every = int(self.refresh_every)
        self.buffer_size = int(self.buffer_size) or int(self.rows) * self.refresh_every
        if self.refresh_every < 1:
            raise ConfigError(f"synthetic.online.refresh_every must be >= 1, "
                              f"got {self.refresh_every}")
        if self.buffer_size < self.rows:
            raise ConfigError(f"synthetic.online.buffer_size {self.buffer_size} is smaller than "
                              f"the {self.rows} synthetic rows of a batch")
        shards = distributed.num_batch_shards(self.mesh)
        for what, n in (("synthetic rows per batch", self.rows), ("buffer_size",
                                                                  self.buffer_size)):
            if n % shards:
                raise ConfigError(f"{what} ({n}) must be a multiple of the {shards} batch "
                                  f"shards of the mesh")
        num_classes = len(self.probs)
        sample_fn = make_sample_fn(
            self.net_apply, self.edm_cfg, mode=self.mode, image_shape=tuple(self.image_shape),
            num_sources=self.num_sources, num_classes=num_classes, class_conditional=True,
            sampler="heun", num_steps=int(self.num_steps), source_label=0)
        logp = jnp.log(jnp.asarray(self.probs, jnp.float32))
        rep = distributed.replicated(self.mesh)
        bsh = distributed.batch_sharding(self.mesh)
        base = jax.random.PRNGKey(int(self.seed))
        n_buf = self.buffer_size

        def refresh(params, r):
            """Buffer ``r``: rows ``0 … buffer_size − 1`` (images uint8, labels)."""
            rows = jax.lax.with_sharding_constraint(jnp.arange(n_buf, dtype=jnp.int32), bsh)
            k_img = jax.random.fold_in(jax.random.fold_in(base, 0), r)
            k_lab = jax.random.fold_in(jax.random.fold_in(base, 1), r)
            labels = jax.vmap(
                lambda j: jax.random.categorical(jax.random.fold_in(k_lab, j), logp))(rows)
            labels = labels.astype(jnp.int32)
            images = sample_fn(params, k_img, rows, labels)
            return {"image": signed_to_uint8(images), "label": labels}

        self._refresh = jax.jit(refresh, in_shardings=(rep, rep), out_shardings=bsh)
        m, fresh = int(self.rows), self.refresh_every == 1 and n_buf == self.rows
        w = float(self.label_weight)

        def merge(real, buf, s):
            if fresh:
                syn = buf
            else:
                pick = jax.random.permutation(
                    jax.random.fold_in(jax.random.fold_in(base, 2), s), n_buf)[:m]
                syn = jax.tree_util.tree_map(lambda a: a[pick], buf)
            syn = {"image": syn["image"], "label": syn["label"],
                   "weight": jnp.full((m,), w, jnp.float32),
                   "source": jnp.ones((m,), jnp.int32)}
            out = {k: jnp.concatenate([real[k], syn[k].astype(real[k].dtype)]) for k in real}
            return out, (jnp.arange(m, dtype=jnp.int32) if fresh else pick.astype(jnp.int32))

        self._merge = jax.jit(merge, out_shardings=(bsh, rep))
        self._buffer: tuple[int, Any] | None = None
        self.generator_s = 0.0  # wall seconds spent in refreshes (see ``buffer``)
        self.refreshes = 0
        self._open_spill("online/edm", {"seed": int(self.seed), "num_steps": int(self.num_steps),
                                        "refresh_every": self.refresh_every,
                                        "buffer_size": n_buf, "rows": m})

    def refresh_program(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The jitted refresh (Heun sampling of one replay buffer) and its arguments, the refresh
        number as a ``jax.ShapeDtypeStruct``: what ``augdiff compile`` lowers."""
        r = jax.ShapeDtypeStruct((), jnp.int32, sharding=distributed.replicated(self.mesh))
        return self._refresh, (self.params, r)

    def buffer(self, r: int) -> dict[str, jax.Array]:
        """The replay buffer of refresh ``r`` (cached; regenerated when ``r`` changes).

        With ``timed`` each refresh is waited for and its wall time added to ``generator_s``
        (the generator's share of the step in ``run.json``); this serialises the refresh with
        the train step, so set ``timed = False`` where dispatch overlap matters more than the
        measurement."""
        if self._buffer is None or self._buffer[0] != r:
            t0 = time.perf_counter()
            buf = self._refresh(self.params, jnp.asarray(r, jnp.int32))
            if self.timed:
                jax.block_until_ready(buf)
                self.generator_s += time.perf_counter() - t0
            self.refreshes += 1
            self._buffer = (r, buf)
        return self._buffer[1]

    def complete(self, real: dict[str, jax.Array], step: int) -> dict[str, jax.Array]:
        """``real`` (``B − m`` rows on the mesh) with the ``m`` synthetic rows of ``step``
        appended (``source = 1``, ``weight = label_weight``)."""
        buf = self.buffer(int(step) // self.refresh_every)
        out, pick = self._merge(real, buf, jnp.asarray(step, jnp.int32))
        if self.spill_every > 0:
            self._spill_rows(out, pick, int(step))
        return out

    def _row_provenance(self, step: int, pick: int) -> dict[str, Any]:
        return {"refresh": step // self.refresh_every, "buffer_row": pick}

    @property
    def images_per_step(self) -> float:
        """Generated images per train step, ``buffer_size / refresh_every``."""
        return self.buffer_size / self.refresh_every



@dataclasses.dataclass
class OnlineEdit(Spill):
    """The edit generator online (``synthetic.online.kind = 'edit'``): each step's synthetic rows
    are fresh EDM SDEdit edits of the step's real images, made into DiffuseMix hybrids with an
    online mask (seed 000 §4.6: no pair is ever seen with the same generated content twice).

    Row ``j < m`` of step ``s`` takes the batch's real row ``j`` (image ``I``, class ``c``):

    - edit ``Î = SDEdit(I, n, σ_start, N)`` under ``c`` (:func:`augdiff.edm.edit.make_edit_fn`),
      ``n ~ N(0, I)`` from ``fold_in(fold_in(fold_in(K, 3), s), j)``;
    - hybrid and fractal blend :func:`augdiff.methods.hybrids.diffusemix` with the
      ``online`` policy, hybrid key ``fold_in(K, 4)``, ``epoch = s``, ``pair_id = j`` (pair
      key ``fold_in(fold_in(fold_in(K, 4), s), j)``), fractal bank
      ``hybrids.fractal_bank(fold_in(K, 5), fractal_bank_size, size)``;
    - label ``c``, weight ``label_weight · (1 − λ)`` under label scaling (else
      ``label_weight``), quantised to uint8 as a store holds it.

    ``K = PRNGKey(seed)``: every row is a pure function of (seed, step, row) and the batch's
    real images. Needs ``m ≤ B − m`` (share ≤ 0.5).
    """

    net_apply: Callable[..., jax.Array]
    params: Any
    edm_cfg: Any
    image_shape: tuple[int, int, int]
    rows: int
    mesh: Mesh
    spec: Any = None  # hybrids.DiffuseMixSpec (policy forced to 'online')
    seed: int = 0
    num_steps: int = 6
    sigma_start: float = 2.0
    fractal_bank_size: int = 64
    label_weight: float = 1.0
    timed: bool = True
    spill_every: int = 0
    spill_store: str = ""
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.spec or hybrids.DiffuseMixSpec()
        self.spec = dataclasses.replace(spec, policy="online")
        shards = distributed.num_batch_shards(self.mesh)
        if self.rows % shards:
            raise ConfigError(f"synthetic rows per batch ({self.rows}) must be a multiple of "
                              f"the {shards} batch shards of the mesh")
        size = int(self.image_shape[0])
        edit = make_edit_fn({"net_apply": self.net_apply, "edm": self.edm_cfg, "size": size,
                             "class_conditional": True},
                            sigma_start=float(self.sigma_start), num_steps=int(self.num_steps))
        base = jax.random.PRNGKey(int(self.seed))
        k_hyb = jax.random.fold_in(base, 4)
        bank = (hybrids.fractal_bank(jax.random.fold_in(base, 5), int(self.fractal_bank_size),
                                     size) if self.spec.fractal else None)
        m, w, spec = int(self.rows), float(self.label_weight), self.spec
        bsh = distributed.batch_sharding(self.mesh)
        rep = distributed.replicated(self.mesh)

        def make(params, real, s):
            if real["image"].shape[0] < m:
                raise ConfigError(f"synthetic.online.kind='edit' edits the batch's real rows: "
                                  f"{m} synthetic rows need share <= 0.5 (got "
                                  f"{real['image'].shape[0]} real rows)")
            rows = jnp.arange(m, dtype=jnp.int32)
            k_edit = jax.random.fold_in(jax.random.fold_in(base, 3), s)
            keys = jax.vmap(lambda j: jax.random.fold_in(k_edit, j))(rows)
            parent = to_signed(real["image"][:m])
            label = real["label"][:m].astype(jnp.int32)
            edited = edit(params, keys, parent, label)
            mixed, lw = hybrids.diffusemix(k_hyb, parent, edited, rows, bank, spec=spec,
                                           epoch=s)
            syn = {"image": signed_to_uint8(mixed), "label": label, "weight": w * lw,
                   "source": jnp.ones((m,), jnp.int32)}
            out = {k: jnp.concatenate([real[k], syn[k].astype(real[k].dtype)]) for k in real}
            return out, rows

        self._make = jax.jit(make, in_shardings=(rep, bsh, rep), out_shardings=(bsh, rep))
        self.generator_s = 0.0
        self.refreshes = 0
        self.buffer_size = m
        self.refresh_every = 1
        self._open_spill("online/edit", {"seed": int(self.seed), "num_steps": int(self.num_steps),
                                         "sigma_start": float(self.sigma_start), "rows": m,
                                         "hybrid": dataclasses.asdict(self.spec)})

    def complete(self, real: dict[str, jax.Array], step: int) -> dict[str, jax.Array]:
        """``real`` (``B − m`` rows) with ``m`` hybrids of fresh edits of its first ``m`` rows
        appended (``source = 1``)."""
        t0 = time.perf_counter()
        out, pick = self._make(self.params, real, jnp.asarray(step, jnp.int32))
        if self.timed:
            jax.block_until_ready(out)
            self.generator_s += time.perf_counter() - t0
        self.refreshes += 1
        if self.spill_every > 0:
            self._spill_rows(out, pick, int(step))
        return out

    def _row_provenance(self, step: int, pick: int) -> dict[str, Any]:
        return {"parent_row": pick, "sigma_start": float(self.sigma_start),
                "editor": "edm-sdedit", "hybrid": self.spec.mask}

    @property
    def images_per_step(self) -> float:
        return float(self.rows)



def load_generator(workdir: str, mesh: Mesh) -> dict[str, Any]:
    """The class-conditional generator of ``synthetic.online.checkpoint`` (a
    ``train-diffusion`` workdir or an exported generator), opened by
    :func:`augdiff.edm.model.open_generator` with its parameters replicated on ``mesh``."""
    try:
        gen = open_generator(workdir, mesh=mesh)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"synthetic.online.checkpoint: {e}") from None
    if not gen["class_conditional"]:
        raise ConfigError(f"synthetic.online.checkpoint {workdir}: the generator is not "
                          f"class-conditional")
    return gen


def make_online_source(config: ml_collections.ConfigDict, real: Any,
                       mesh: Mesh) -> OnlineEDM | OnlineEdit | None:
    """The :class:`OnlineEDM` of ``config.synthetic.online`` (None when not configured).

    Fields: ``kind`` ('edm'), ``checkpoint`` (a train-diffusion workdir), ``share`` (synthetic
    fraction of each batch), ``num_steps`` (Heun ``N``), ``refresh_every`` (``R``),
    ``buffer_size`` (0: ``m · R``), ``balance`` (uniform | balance); for ``kind = 'edit'``
    (:class:`OnlineEdit`): ``sigma_start`` (SDEdit strength), ``hybrid`` (the DiffuseMix
    fields of :class:`augdiff.methods.hybrids.DiffuseMixSpec`; policy online),
    ``fractal_bank_size``; ``seed`` (-1: the run's
    seed), ``spill_every`` (N > 0: every N-th synthetic row the classifier saw goes into the
    store ``spill_store``, '' = ``<workdir>/online_store``, with its provenance; 0: off).
    The label weight is ``synthetic.label_weight``.
    """
    on = online_config(config)
    if on is None:
        return None
    other = config.get("online", None)
    if other is not None and str(other.get("kind", "none") or "none") != "none":
        raise ConfigError("synthetic.online cannot be combined with online.kind="
                          f"{other.kind!r} yet (the edit-generator online mode is not built)")
    if not str(on.get("checkpoint", "") or ""):
        raise ConfigError("synthetic.online.checkpoint must name a train-diffusion workdir")
    gen = load_generator(os.path.abspath(str(on.checkpoint)), mesh)
    want = (int(config.data.image_size),) * 2 + (int(config.data.channels),)
    if tuple(gen["image_shape"]) != want:
        raise ConfigError(f"synthetic.online.checkpoint makes {gen['image_shape']} images but "
                          f"data.image_size/channels ask for {want}")
    if gen["num_classes"] > int(real.num_classes):
        raise ConfigError(f"synthetic.online generator has {gen['num_classes']} classes, the "
                          f"real data {real.num_classes}")
    seed = int(on.get("seed", -1))
    seed = int(config.seed) if seed < 0 else seed
    spill = dict(spill_every=int(on.get("spill_every", 0) or 0),
                 spill_store=_spill_path(config, str(on.get("spill_store", "") or "")),
                 provenance={"generator": os.path.basename(os.path.abspath(str(on.checkpoint))),
                             "generator_step": int(gen["step"])})
    if str(on.kind) == "edit":
        if gen["mode"] == "casd":
            raise ConfigError("synthetic.online.kind='edit' needs a dm/sda generator, not casd")
        hyb = on.get("hybrid", None)
        return OnlineEdit(
            net_apply=gen["net_apply"], params=gen["params"], edm_cfg=gen["edm"],
            image_shape=gen["image_shape"], rows=online_rows(config), mesh=mesh,
            spec=hybrids.spec_from_config(hyb.to_dict() if hyb is not None else {}), seed=seed,
            num_steps=int(on.get("num_steps", 6)),
            sigma_start=float(on.get("sigma_start", 1.0)),
            fractal_bank_size=int(on.get("fractal_bank_size", 64)),
            label_weight=float(config.synthetic.get("label_weight", 1.0)), **spill)
    counts = np.bincount(np.asarray(real.labels), minlength=gen["num_classes"])
    return OnlineEDM(
        net_apply=gen["net_apply"], params=gen["params"], edm_cfg=gen["edm"],
        image_shape=gen["image_shape"],
        probs=class_probs(str(on.get("balance", "uniform")), counts[:gen["num_classes"]]),
        rows=online_rows(config), mesh=mesh, seed=seed,
        num_steps=int(on.get("num_steps", 10)), refresh_every=int(on.get("refresh_every", 1)),
        buffer_size=int(on.get("buffer_size", 0)),
        label_weight=float(config.synthetic.get("label_weight", 1.0)),
        mode=gen["mode"], num_sources=gen["num_sources"], **spill)



def _spill_path(config: ml_collections.ConfigDict, path: str) -> str:
    """``synthetic.online.spill_store``; '' = ``<workdir>/online_store``."""
    return os.path.abspath(path) if path else os.path.join(os.path.abspath(str(config.workdir)),
                                                          "online_store")


def pair_table(
    synthetic: Any, real: Any, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(parents, pair_ids)`` of every row of an edits store: the real row each edit was made
    from and its edit number. Checks that each parent's file name matches the real source, so
    a store made from different real data (another subset) fails loudly."""
    n = len(synthetic)
    parents = np.empty(n, np.int64)
    pair_ids = np.empty(n, np.int64)
    for r in tqdm(range(n), desc="pair table", disable=not progress):
        prov = synthetic.provenance(r)
        if "parent" not in prov or "example" not in prov:
            raise ValueError(
                f"synthetic row {r} ({prov.get('key')}) has no parent/example in its provenance: "
                "online hybrids need a DiffuseMix edits store"
            )
        p = int(prov["parent"])
        if not 0 <= p < len(real):
            raise ValueError(f"synthetic row {r}: parent {p} outside the {len(real)} real rows")
        name = prov.get("parent_name")
        if name is not None and hasattr(real, "name_of") and not _same_file(real.name_of(p), name):
            raise ValueError(
                f"synthetic row {r}: parent {p} is {real.name_of(p)!r} in the real data but "
                f"{name!r} in the store; train on the data config the store was generated from"
            )
        parents[r], pair_ids[r] = p, int(prov["example"])
    return parents, pair_ids


def _same_file(a: str, b: str) -> bool:
    """Same ``<class>/<file>`` tail (the data root may have moved since generation)."""
    return a.replace("\\", "/").split("/")[-2:] == b.replace("\\", "/").split("/")[-2:]


class OnlinePairs:
    """Online DiffuseMix hybrids (seed 000 §4.6): masks (and λ, fractals) drawn on device every
    time a pair is seen.

    ``host(batch)`` adds, for each synthetic row of a loader batch, its parent real image
    (``original``, uint8) and pair id (``pair_id``; ``-1`` and the row's own image for real
    rows). ``device(batch, epoch)`` is pure and jittable: with ``image`` already in [-1, 1], it
    replaces the synthetic rows by ``hybrids.diffusemix(hybrid_key, I, Î, pair_ids, F,
    epoch=epoch)`` and their ``weight`` by ``weight · (1 − λ)`` under label scaling; real rows
    pass unchanged.
    """

    extra_keys = ("original", "pair_id")

    def __init__(
        self,
        real: Any,
        synthetic: Any,
        *,
        spec: hybrids.DiffuseMixSpec,
        key: jax.Array,
        fractals: jax.Array | None,
        parents: np.ndarray | None = None,
        pair_ids: np.ndarray | None = None,
    ):
        if spec.fractal and fractals is None:
            raise ValueError("online hybrids with fractal blending need a fractal bank")
        if parents is None or pair_ids is None:
            parents, pair_ids = pair_table(synthetic, real)
        self.real, self.spec, self.key, self.fractals = real, spec, key, fractals
        self.parents, self.pair_ids = np.asarray(parents), np.asarray(pair_ids)

    def host(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        syn = np.asarray(batch["source"]) > 0
        rows = np.asarray(batch["index"])
        original = np.array(batch["image"], copy=True)
        pair = np.full(len(rows), -1, np.int32)
        for b in np.flatnonzero(syn):
            original[b] = self.real[int(self.parents[rows[b]])]["image"]
            pair[b] = self.pair_ids[rows[b]]
        out["original"], out["pair_id"] = original, pair
        return out

    def device(self, batch: Mapping[str, jax.Array], epoch: jax.Array | int) -> dict[str, Any]:
        x = batch["image"]
        original = to_signed(batch["original"])
        mixed, w = hybrids.diffusemix(
            self.key, original.astype(x.dtype), x, batch["pair_id"], self.fractals,
            spec=self.spec, epoch=epoch,
        )
        syn = batch["source"] > 0
        out = dict(batch)
        out["image"] = jnp.where(syn[:, None, None, None], mixed, x)
        out["weight"] = jnp.where(syn, batch["weight"] * w, batch["weight"])
        return out


class OnlineFractals:
    """Seed 000's Fractal rows as its code runs them (gdl_term ``--train fractal_mixup``):
    every training image blended with a fractal drawn afresh each time it is seen,
    ``C = (1 − λ) I + λ F`` (λ = 0.2), no clean originals and no store.

    ``device(batch, step)`` (``per_step``: the trainer passes the global step, not the epoch)
    draws image ``b``'s fractal from ``fold_in(fold_in(key, step), b)``, so a new fractal per
    image per step; with label scaling the ``weight`` becomes ``weight · (1 − λ)``. The blend is
    :func:`augdiff.methods.hybrids.diffusemix` with ``mask='original'`` (M = 1, the original
    only) and the online policy keyed by the step.
    """

    extra_keys: tuple[str, ...] = ()
    per_step = True

    def __init__(self, *, spec: hybrids.DiffuseMixSpec, key: jax.Array, fractals: jax.Array):
        if spec.mask != "original" or not spec.fractal:
            raise ValueError("online fractals need hybrid.mask='original' and hybrid.fractal")
        self.spec = dataclasses.replace(spec, policy="online")
        self.key, self.fractals = key, fractals

    def host(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return dict(batch)

    def device(self, batch: Mapping[str, jax.Array], step: jax.Array | int) -> dict[str, Any]:
        x = batch["image"]
        slots = jnp.arange(x.shape[0], dtype=jnp.int32)
        mixed, w = hybrids.diffusemix(self.key, x, x, slots, self.fractals, spec=self.spec,
                                      epoch=step)
        return {**batch, "image": mixed, "weight": batch["weight"] * w}


def make_online(config: Any, real: Any,
                synthetic: Any) -> OnlinePairs | OnlineFractals | None:
    """The online transform ``config.online`` asks for, or None (``online.kind = 'none'``).

    ``kind='fractal'`` builds :class:`OnlineFractals` (Table 1's Fractal rows online, from
    ``config.diffusemix.hybrid``: mask ``original``, λ, label scaling).
    ``kind='diffusemix'`` builds :class:`OnlinePairs` from ``config.diffusemix.hybrid`` (policy
    ``online`` redraws per epoch; ``offline`` reproduces the stored hybrids), the run's hybrid
    and fractal keys (:func:`run_keys` of ``config.diffusemix.seed`` or ``config.seed``) and a
    fractal bank of ``diffusemix.fractal_bank_size`` images at ``data.image_size``.
    """
    online = config.get("online", None)
    kind = online.get("kind", "none") if online is not None else "none"
    if kind in ("none", "", None):
        return None
    if kind not in ("diffusemix", "fractal"):
        raise ValueError(f"online.kind must be 'none', 'diffusemix' or 'fractal', got {kind!r}")
    if kind == "fractal":  # every real image blended with a fresh fractal per step
        spec, _ = hybrid_spec(config.diffusemix.hybrid)
        _, hybrid_key, fractal_key = run_keys(generation_seed(config))
        bank = fractal_bank_from_config(config.diffusemix, fractal_key,
                                        int(config.data.image_size))
        return OnlineFractals(spec=spec, key=hybrid_key, fractals=bank)
    if synthetic is None:
        raise ValueError("online.kind='diffusemix' needs synthetic.path (a DiffuseMix edits store)")
    dm = config.diffusemix
    spec, is_semantic = hybrid_spec(dm.hybrid)
    if is_semantic:
        raise ValueError("online hybrids support mask concat/random/patches; SHB is written "
                         "offline")
    _, hybrid_key, fractal_key = run_keys(generation_seed(config))
    bank = fractal_bank_from_config(dm, fractal_key, int(config.data.image_size)) \
        if spec.fractal else None
    return OnlinePairs(real, synthetic, spec=spec, key=hybrid_key, fractals=bank)


def build(config: ml_collections.ConfigDict, real: Any, synthetic: Any,
          mesh: Mesh) -> tuple[OnlinePairs | OnlineFractals | None,
                               OnlineEDM | OnlineEdit | None]:
    """What :func:`augdiff.train.classifier.train_and_evaluate` takes as ``online=``:
    ``(transform, source)`` = (:func:`make_online` for ``config.online``,
    :func:`make_online_source` for ``config.synthetic.online``), each None when not asked for.

    The transform has ``host(batch)`` (adds ``extra_keys`` to a loader batch),
    ``device(batch, epoch)`` and ``extra_keys``; the source has ``complete(batch, step)``,
    ``flush_spill()``, ``close(commit=)`` and the ``generator_s`` / ``refreshes`` /
    ``buffer_size`` counters ``run.json`` records.
    """
    transform = make_online(config, real, synthetic)
    return transform, make_online_source(config, real, mesh)
