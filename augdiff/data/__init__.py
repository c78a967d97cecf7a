"""Data: real sources, subsets, the synthetic store, mixing loaders, augmentation, fractals.

- :mod:`augdiff.data.sources`   ``open_real_source(data_cfg, split)`` (folder, zip, TFDS)
- :mod:`augdiff.data.subsets`   N-per-class and long-tailed subsets
- :mod:`augdiff.data.selection` choosing rows of a source by class and reading their images
- :mod:`augdiff.data.store`     ``StoreWriter`` / ``SyntheticStore`` (ArrayRecord shards)
- :mod:`augdiff.data.schedules` synthetic-share schedules ρ(t)
- :mod:`augdiff.data.loader`    ``MixedLoader`` (grain): real + synthetic batches
- :mod:`augdiff.data.augment`   jitted on-device augmentation (crop/flip, CutOut, Mixup, CutMix)
- :mod:`augdiff.data.fractal`   seeded IFS fractal images

Submodules are imported on use, so ``import augdiff.data`` stays cheap.
"""
