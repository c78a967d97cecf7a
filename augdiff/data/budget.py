"""How many images one epoch of a real + synthetic run draws: the epoch budget.

- ``real`` (gdl_term's default, ``enlarge_dataset=False``): an epoch draws ``N`` images from
  the row's pool (originals ∪ hybrids), ``N`` = the number of real training images, so a
  mixed row trains for as many steps as the real-only row. gdl_term builds that epoch in two
  ways: ``fractal_utils.Mixer.subset_loader`` samples ``labels_per_class`` images per class
  from the concatenated pool, and ``diffusemix_scheduler.CurriculumDataset`` (the schedule
  rows) has one slot per original, filled by its hybrid with probability ρ(t). augdiff draws
  the ``N`` images of each epoch with the row's synthetic share (the union's share
  ``n_syn / (n_real + n_syn)`` for a constant row, ρ(t) for a schedule) from two endless
  per-source permutations (:mod:`augdiff.data.loader`), so over epochs every original and
  every hybrid is visited; gdl_term's ``subset_loader`` instead fixes one class-balanced
  subset of the pool when the run starts.
- ``union``: an epoch is one pass over originals ∪ hybrids (``n_real + n_syn`` images;
  DiffuseMix's concatenation with ``enlarge_dataset=True``), so a mixed row with as many
  hybrids as originals trains twice the real-only row's steps.
"""

from __future__ import annotations

from augdiff.config import ConfigError

EPOCH_BUDGETS = ("real", "union")


def epoch_images(budget: str, num_real: int, num_synthetic: int) -> int:
    """Images one epoch of a mixed run draws under ``budget`` (see the module docstring):
    ``num_real`` for ``real``, ``num_real + num_synthetic`` for ``union``."""
    if budget not in EPOCH_BUDGETS:
        raise ConfigError(f"mixed.epoch_budget must be one of {EPOCH_BUDGETS}, got {budget!r}")
    return int(num_real) if budget == "real" else int(num_real) + int(num_synthetic)
