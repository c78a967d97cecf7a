"""``augdiff generate`` with ``method='sd'``: plain Stable Diffusion text2img / img2img of a
real dataset into a synthetic store (resumable).

- ``sd.mode='text2img'``: ``sd.num_per_class`` images per class from ``sd.prompt_template``
  (``'a photo of a {}'`` filled with the class name).
- ``sd.mode='img2img'``: ``sd.num_per_image`` variations of every real training image (of the
  ``data`` subset), prompted with its class name, at ``sd.strength``.

Example ``e`` (a fixed numbering of everything the run will produce) draws all its randomness
from ``fold_in(PRNGKey(seed), e)``, so a resumed run skips the keys already in the store and
reproduces the same bytes for the rest, whatever the batch composition. Each process of a
multi-process run generates its own contiguous slice of examples on its local devices.
Provenance per image: prompt, seed, example number, guidance, steps, sampler, strength,
parent (real index) and the model (``'tiny-random'`` for the test model).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from augdiff import distributed
from augdiff.data.pixels import unit_to_store
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, example_keys, model_identity, pending_batches
from augdiff.sd import loading, pipelines, tiny


def _model(config: Any) -> tuple[loading.SDComponents, dict]:
    sd = config.sd
    return tiny.load_or_make_tiny(
        sd.model, kind="txt2img", dtype=sd.dtype, tiny=bool(sd.tiny),
        tiny_dir=os.path.join(config.workdir, "tiny_sd"), seed=int(config.seed),
        variant=str(sd.get("variant", "") or ""), config=str(sd.get("model_config", "") or ""),
        missing="config.sd.model is empty: give a model path/hub id or set sd.tiny=True")


def _plan(config: Any, class_names: list[str], real: Any) -> list[dict[str, Any]]:
    """Every example of the run, numbered: key, label, prompt, parent."""
    sd = config.sd
    plan = []
    if sd.mode == "text2img":
        for c, name in enumerate(class_names):
            for j in range(int(sd.num_per_class)):
                plan.append(
                    dict(
                        key=f"t2i-c{c:04d}-{j:06d}",
                        label=c,
                        parent=None,
                        prompt=sd.prompt_template.format(name),
                    )
                )
    elif sd.mode == "img2img":
        n = len(real) if not sd.max_images else min(len(real), int(sd.max_images))
        for i in range(n):
            label = int(real.labels[i])
            for j in range(int(sd.num_per_image)):
                plan.append(
                    dict(
                        key=f"i2i-r{i:07d}-{j:03d}",
                        label=label,
                        parent=i,
                        prompt=sd.prompt_template.format(class_names[label]),
                    )
                )
    else:
        raise ValueError(f"config.sd.mode must be 'text2img' or 'img2img', got {sd.mode!r}")
    for e, item in enumerate(plan):
        item["example"] = e
    return plan


def model_identity_of(components: loading.SDComponents) -> dict[str, Any]:
    """What a store manifest records as ``model`` for SD weights: ``name`` (the hub id, path
    or ``tiny-random``), the resolved folder, the hub ``snapshot`` hash when it is a
    hub-cache snapshot, and the ``sha256`` of its files (:func:`augdiff.files.content_hash`)."""
    info = components.info
    return model_identity(info.get("resolved_path") or info.get("path"),
                          kind=f"sd/{components.kind}", name=loading.model_label(components))


def generate(config: Any) -> dict[str, Any]:
    """Run the generation the config describes; returns a summary dict."""

    sd = config.sd
    components, params = _model(config)
    real = open_real_source(config.data, "train")
    plan = _plan(config, list(real.class_names), real)
    mine = plan[distributed.process_slice(len(plan))]
    mesh = distributed.make_mesh(devices=jax.local_devices())
    params = pipelines.place_params(params, mesh)
    store_dir = config.get("store_dir", None) or os.path.join(config.workdir, "synthetic")
    base = jax.random.PRNGKey(int(config.seed))
    res = int(sd.resolution)
    manifest_cfg = {
        "model": loading.model_label(components),
        "mode": sd.mode,
        "sampler": sd.sampler,
        "steps": int(sd.steps),
        "guidance": float(sd.guidance),
        "resolution": res,
        "seed": int(config.seed), "eta": float(sd.eta), "strength": float(sd.strength),
        "prompt_template": sd.prompt_template, "negative_prompt": sd.negative_prompt,
        "image_size": int(config.data.image_size), "class_names": list(real.class_names),
    }
    written = 0
    with StoreWriter(store_dir, method="sd", config=manifest_cfg,
                     model=model_identity_of(components)) as store:
        uncond = pipelines.encode_prompts(components, params, [sd.negative_prompt])
        prompt_cache: dict[str, jax.Array] = {}
        for batch in pending_batches(store, mine, int(sd.batch_size), desc="sd generate"):
            for it in batch:  # encode each distinct prompt once per run
                if it["prompt"] not in prompt_cache:
                    prompt_cache[it["prompt"]] = pipelines.encode_prompts(
                        components, params, it["prompt"]
                    )[0]
            cond = jnp.stack([prompt_cache[it["prompt"]] for it in batch])
            keys = example_keys(base, [it["example"] for it in batch])
            common = dict(
                guidance_scale=float(sd.guidance),
                num_steps=int(sd.steps),
                sampler=sd.sampler,
                eta=float(sd.eta),
                mesh=mesh,
            )
            if sd.mode == "text2img":
                images = pipelines.text2img(
                    components, params, cond, keys, negative=uncond, height=res, width=res, **common
                )
            else:
                parents = [real[it["parent"]]["image"] for it in batch]
                x = unit_to_store(np.stack(parents).astype(np.float32) / 255.0, res)
                images = pipelines.img2img(
                    components,
                    params,
                    x.astype(np.float32) / 127.5 - 1.0,
                    cond,
                    keys,
                    strength=float(sd.strength),
                    negative=uncond,
                    **common,
                )
            out = unit_to_store(images, int(config.data.image_size))
            for it, img in zip(batch, out, strict=True):
                prov = dict(
                    prompt=it["prompt"],
                    seed=int(config.seed),
                    example=it["example"],
                    guidance=float(sd.guidance),
                    steps=int(sd.steps),
                    sampler=sd.sampler,
                    parent=it["parent"],
                    model=manifest_cfg["model"],
                )
                if sd.mode == "img2img":
                    prov["strength"] = float(sd.strength)
                if float(img.max()) == 0.0:
                    store.note("black_images")
                written += bool(store.add(it["key"], img, it["label"], source=1, provenance=prov))
    return {
        "store": store_dir,
        "planned": len(plan),
        "this_process": len(mine),
        "written": written,
        "model": manifest_cfg["model"],
    }
