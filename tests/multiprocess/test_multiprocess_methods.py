"""Multi-process generation equals the 1-process run: Diffusion Inversion and augmented
conditioning (``augdiff generate``), tiny random-weight models.

Layouts: 1 plain process with 2 CPU devices (the reference) and 2 processes x 1 device started
by ``launch/local_cpu.sh``. What must hold: every key is written exactly once over all
processes, each process writes only its own contiguous slice of the plan, and the images and
provenance equal the 1-process store. Diffusion Inversion's stage 1 is split by groups
(group g on process g mod P) on differently sized local meshes, so its vectors may differ in
the last float32 bits; images are compared to at most one uint8 level, provenance exactly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _mp_helpers import launch, tiny_image_folder

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LAYOUTS = {1: 2, 2: 1}  # processes -> devices per process (2 global devices)
CLASSES = ["airplane", "cat", "ship", "truck"]


@pytest.fixture(scope="module")
def setup(cifar_zip, tmp_path_factory):
    from augdiff.sd import tiny

    root = tmp_path_factory.mktemp("mp_methods")
    folder = tiny_image_folder(cifar_zip, root / "data", classes=CLASSES, per_split={"train": 3})
    models = {
        kind: str(tiny.make_tiny_sd(root / f"tiny_{kind}", kind=kind, formats=("flax",)))
        for kind in ("txt2img", "unclip")
    }
    return root, folder, models


def _store(root: str) -> tuple[dict[str, list[str]], dict[str, np.ndarray], dict[str, dict]]:
    from augdiff.data.store import SHARD_RE, SyntheticStore

    per_process: dict[str, list[str]] = {}
    for name in sorted(os.listdir(root)):
        m = SHARD_RE.match(name)
        if m:
            with open(os.path.join(root, name + ".idx.json")) as f:
                per_process.setdefault(m.group(1), []).extend(json.load(f)["keys"])
    store = SyntheticStore(root)
    provs = {store.provenance(i)["key"]: store.provenance(i) for i in range(len(store))}
    images = {store.provenance(i)["key"]: store[i]["image"] for i in range(len(store))}
    return per_process, images, provs


def _run(setup, method: str, processes: int) -> str:
    root, folder, models = setup
    workdir = root / f"{method}_{processes}p"
    if method == "diffinv":
        args = [
            "generate",
            "--config",
            "configs/diffinv_cifar10.py:smoke",
            f"--config.model.path={models['txt2img']}",
            "--config.inversion.batch_size=2",
        ]
    else:
        args = [
            "generate",
            "--config",
            "configs/augcond_cifar10.py:fewshot_smoke",
            f"--config.model.path={models['unclip']}",
            "--config.augcond.batch_size=4",
        ]
    args += [f"--config.data.path={folder}", f"--config.workdir={workdir}"]
    launch(
        args,
        processes=processes,
        devices_per_process=LAYOUTS[processes],
        logdir=workdir / "logs",
        timeout=600,
    )
    return str(workdir / "synthetic")


@pytest.mark.parametrize("method", ["diffinv", "augcond"])
def test_two_process_store_equals_one_process(setup, method):
    from augdiff.distributed import process_slice

    ref_keys, ref_images, ref_provs = _store(_run(setup, method, 1))
    keys, images, provs = _store(_run(setup, method, 2))
    expected = sorted(ref_images)
    n = {"diffinv": 4 * 4, "augcond": 4 * 2}[method]  # 4 vectors x 4 variants; 4 classes x 2
    assert len(expected) == n and list(ref_keys) == ["00000"]
    all_keys = [k for ks in keys.values() for k in ks]
    assert sorted(all_keys) == expected, "a key is missing or written twice"
    plan = sorted(expected, key=lambda k: ref_provs[k]["example"])
    for p in range(2):
        assert keys.get(f"{p:05d}", []) == plan[process_slice(n, p, 2)], f"process {p}"
    for k in expected:
        a, b = provs[k], ref_provs[k]
        assert {x: v for x, v in a.items() if x != "time"} == {
            x: v for x, v in b.items() if x != "time"
        }, k
        d = np.abs(images[k].astype(int) - ref_images[k].astype(int))
        if method == "augcond":
            np.testing.assert_array_equal(images[k], ref_images[k], err_msg=k)
        else:
            assert d.max() <= 1 and d.mean() < 0.01, (k, d.max(), d.mean())
    stack = np.stack([images[k] for k in expected]).astype(np.float32)
    assert stack.std(axis=0).mean() > 1.0  # distinct examples
