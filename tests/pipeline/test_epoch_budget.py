"""Seed 000's equal training budgets, from gdl_term's definition of an epoch.

gdl_term (the paper's code) trains with ``enlarge_dataset=False`` by default: an epoch draws
``N`` images from the row's pool (originals ∪ hybrids), ``N`` = the number of real training
images (``fractal_utils.Mixer.subset_loader`` takes ``labels_per_class`` = the real count per
class; ``diffusemix_scheduler.CurriculumDataset`` has one slot per original). So every row
of Tables 1-2 trains ``epochs · ⌊N / B⌋`` steps, vanilla included. ``--enlarge_dataset`` is a
pass over the whole pool (augdiff's ``union`` option).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augdiff.config import ConfigError, load_config
from augdiff.configs import exp_seed000_diffusemix as seed000
from augdiff.data.store import StoreWriter
from augdiff.pipeline.wiring import classifier_config_for
from augdiff.train import classifier

SPEC = "augdiff/configs/exp_seed000_diffusemix.py:"


def _steps(repo_root, row: str, n_real: int, n_syn: int, budget: str | None = None) -> int:
    c = load_config(str(repo_root / (SPEC + f"cpu-{row}")))
    if budget is not None:
        c.mixed.epoch_budget = budget
    outputs = {"prepare": {"num_train": n_real},
               "generate": {"num_images": n_syn, "store": "/nonexistent/store"}}
    # vanilla and the online Fractal rows train on the real images only (train_real)
    kind = "mixed" if "train_mixed" in c.stages else "real"
    sub = classifier_config_for(c, kind, 0, outputs)
    return int(sub.steps_per_epoch) * int(sub.epochs)


def test_every_seed000_row_trains_for_the_same_number_of_steps(repo_root):
    n_real, b, epochs = 1000, 100, 12  # the cpu profile: 100 per class x 10, batch 100
    expected = epochs * (n_real // b)  # gdl_term: N = n_real images per epoch
    rows = seed000.TABLE_ROWS + seed000.EXTRA_ROWS
    steps = {row: _steps(repo_root, row, n_real, n_real) for row in rows}
    assert steps == {row: expected for row in rows}
    # a store of another size changes nothing: the epoch is the real set's size
    assert _steps(repo_root, "baseline", n_real, 3 * n_real) == expected


def test_union_epoch_is_kept_as_an_option(repo_root):
    n_real, b, epochs = 1000, 100, 12
    assert _steps(repo_root, "baseline", n_real, n_real, "union") == epochs * (2 * n_real // b)
    assert _steps(repo_root, "dm_lin", n_real, n_real, "union") == epochs * (2 * n_real // b)
    assert _steps(repo_root, "vanilla", n_real, n_real, "union") == epochs * (n_real // b)
    with pytest.raises(ConfigError, match="mixed.epoch_budget"):
        _steps(repo_root, "baseline", n_real, n_real, "pool")


def test_an_epoch_draws_n_images_from_the_pool(repo_root, tmp_path):
    """The derived config drives the real loader: one epoch = ⌊N / B⌋ batches of B images,
    every one an original or a hybrid of the pool, at the union's share (1:1 here)."""
    n_per_class, classes, b = 12, ("a", "b"), 8
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            d = tmp_path / "data" / split / name
            d.mkdir(parents=True)
            for j in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(d / f"{j}.png")
    n_real = n_per_class * len(classes)
    store = tmp_path / "syn"
    with StoreWriter(str(store), method="test/hybrid", config={}) as w:
        for i in range(n_real):
            w.add(f"{i:08d}", rng.integers(0, 256, (8, 8, 3), np.uint8), i % 2, provenance={})
    c = load_config(str(repo_root / (SPEC + "cpu-baseline")))
    c.workdir = str(tmp_path / "run")
    c.data.path = str(tmp_path / "data")
    c.data.image_size = 8
    c.data.per_class = 0
    c.classifier.overrides.batch_size = b
    c.classifier.overrides.epochs = 2
    outputs = {"prepare": {"num_train": n_real},
               "generate": {"num_images": n_real, "store": str(store)}}
    sub = classifier_config_for(c, "mixed", 0, outputs)
    assert sub.steps_per_epoch == n_real // b  # 3, not (24 + 24) // 8 = 6
    real, _, syn, loader, spe, _ = classifier._open_data(sub)
    assert (len(real), len(syn), spe) == (n_real, n_real, n_real // b)
    epoch = [loader.batch_rows(s) for s in range(spe)]
    drawn = sum(len(is_syn) for is_syn, _ in epoch)
    assert drawn == spe * b and n_real - b < drawn <= n_real  # N images per epoch
    n_syn = sum(int(np.sum(is_syn)) for is_syn, _ in epoch)
    assert abs(n_syn / drawn - 0.5) <= 0.25  # the pool's share, 1:1
    for is_syn, rows in epoch:  # every draw is a row of the pool
        assert np.all(rows[is_syn] < len(syn)) and np.all(rows[~is_syn] < len(real))
