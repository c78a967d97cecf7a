"""Schedules ρ(t) and the real + synthetic MixedLoader (shares, determinism, resume, processes)."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from augdiff.data import schedules
from augdiff.data.loader import MixedLoader, realised_share
from augdiff.data.sources import open_real_source
from augdiff.data.store import StoreWriter, SyntheticStore


class ArraySource:
    """In-memory random-access source: image pixels hold (source, row) for identification."""

    def __init__(self, n: int, source: int, num_classes: int = 10):
        self.n, self.source, self.num_classes = n, source, num_classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        image = np.zeros((2, 2, 3), np.uint8)
        image[..., 0], image[..., 1] = self.source, i % 256
        return {
            "image": image,
            "label": np.int32(i % self.num_classes),
            "source": np.int32(self.source),
            "weight": np.float32(1.0),
            "index": np.int64(i),
        }


REAL, SYN = ArraySource(1000, 0), ArraySource(600, 1)


def loader(schedule=0.0, **kw) -> MixedLoader:
    args = dict(batch_size=16, epochs=10, steps_per_epoch=200, seed=0, process_index=0,
                process_count=1, read_threads=1)  # fmt: skip
    args.update(kw)
    return MixedLoader(REAL, SYN, schedule=schedule, **args)


def assert_same_stream(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["step"] == y["step"] and x["epoch"] == y["epoch"]
        for k in ("image", "label", "source", "weight", "index"):
            np.testing.assert_array_equal(x[k], y[k])


# --------------------------------------------------------------------------- schedules


def test_schedules_closed_forms():
    t = np.arange(0, 12)
    lin = schedules.linear(10)
    np.testing.assert_allclose([lin(e) for e in t], np.minimum(t / 10, 1))
    wu = schedules.warmup(4, 10)
    np.testing.assert_allclose([wu(e) for e in t], np.where(t < 4, 0, np.minimum((t - 4) / 6, 1)))
    st = schedules.step(3, 7)
    np.testing.assert_allclose([st(e) for e in t], np.where(t < 3, 0, np.where(t < 7, 0.5, 1)))
    assert schedules.constant("1:3")(5) == 0.75 and schedules.constant(0.2)(0) == 0.2
    for ratio, share in {"1:7": 7 / 8, "3:1": 0.25, "1:1": 0.5, "1:0": 0.0}.items():
        assert schedules.parse_share(ratio) == pytest.approx(share)


def test_schedule_from_config_and_errors():
    cfg = ml_collections.ConfigDict({"kind": "warmup", "warmup": 2, "total": 0})
    assert schedules.from_config(cfg, epochs=6) == schedules.warmup(2, 6)
    assert schedules.from_config({"kind": "step", "t1": 1, "t2": 3}) == schedules.step(1, 3)
    assert schedules.from_config({"kind": "constant", "rho": "1:1"})(0) == 0.5
    assert schedules.from_config("3:1")(0) == 0.25 and schedules.from_config(None)(0) == 0.0
    with pytest.raises(ValueError, match="kind 'cosine' unknown"):
        schedules.from_config({"kind": "cosine"})
    with pytest.raises(ValueError, match="needs 'total'"):
        schedules.from_config({"kind": "linear"})
    with pytest.raises(ValueError, match="ratio"):
        schedules.parse_share("1:x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        schedules.constant(1.5)
    with pytest.raises(ValueError, match="w < T"):
        schedules.warmup(5, 5)


# --------------------------------------------------------------------------- shares


@pytest.mark.parametrize("ratio", ["1:7", "1:3", "1:1", "3:1", "7:1"])
def test_ratio_realised_over_2000_batches(ratio):
    ld = loader(ratio, epochs=1, steps_per_epoch=2000)
    batches = list(ld)
    assert len(batches) == 2000
    rho = schedules.parse_share(ratio)
    assert abs(realised_share(batches) - rho) < 0.01
    counts = np.array([int((b["source"] > 0).sum()) for b in batches])
    assert set(counts) <= {int(np.floor(rho * 16)), int(np.ceil(rho * 16))}
    np.testing.assert_array_equal(counts, ld.synthetic_per_batch)


@pytest.mark.parametrize(
    "schedule",
    [schedules.linear(10), schedules.warmup(3, 10), schedules.step(3, 7)],
    ids=["linear", "warmup", "step"],
)
def test_schedule_realised_per_epoch(schedule):
    batches = list(loader(schedule, epochs=10, steps_per_epoch=200, batch_size=10))
    assert len(batches) == 2000
    for t in range(10):
        epoch = [b for b in batches if b["epoch"] == t]
        assert len(epoch) == 200
        assert abs(realised_share(epoch) - schedule(t)) < 0.01, t


def test_batch_contents_and_streams():
    ld = loader("1:1", epochs=2, steps_per_epoch=100, synthetic_weight=0.5)
    batches = list(ld)
    b = batches[0]
    assert b["image"].shape == (16, 2, 2, 3) and b["image"].dtype == np.uint8
    for x in batches:  # per-row fields travel with the row
        np.testing.assert_array_equal(x["image"][:, 0, 0, 0], x["source"])
        np.testing.assert_array_equal(x["image"][:, 0, 0, 1], x["index"] % 256)
        np.testing.assert_array_equal(x["label"], x["index"] % 10)
        np.testing.assert_array_equal(x["weight"], np.where(x["source"] > 0, 0.5, 1.0))
    # each stream walks seeded permutations: the first len(real) real rows are a permutation
    real_rows = np.concatenate([x["index"][x["source"] == 0] for x in batches])
    np.testing.assert_array_equal(np.sort(real_rows[:1000]), np.arange(1000))
    syn_rows = np.concatenate([x["index"][x["source"] == 1] for x in batches])
    np.testing.assert_array_equal(np.sort(syn_rows[:600]), np.arange(600))
    # synthetic rows are spread over the batch (every half holds about half of them)
    half = np.array([(x["source"][:8] > 0).sum() for x in batches])
    assert set(half) == {4}


def test_deterministic_from_seed():
    a = list(loader("1:3", epochs=1, steps_per_epoch=50))
    assert_same_stream(a, list(loader("1:3", epochs=1, steps_per_epoch=50)))
    c = list(loader("1:3", epochs=1, steps_per_epoch=50, seed=1))
    assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))


def test_get_state_set_state_resumes_exact_stream():
    full = list(loader(schedules.linear(3), epochs=3, steps_per_epoch=40))
    ld = loader(schedules.linear(3), epochs=3, steps_per_epoch=40)
    head = [next(ld) for _ in range(53)]
    state = ld.get_state()
    assert state["next_step"] == 53
    ld.close()
    fresh = loader(schedules.linear(3), epochs=3, steps_per_epoch=40)
    fresh.set_state(state)
    assert_same_stream(head + list(fresh), full)
    with pytest.raises(ValueError, match="seed"):
        loader(schedules.linear(3), epochs=3, steps_per_epoch=40, seed=9).set_state(state)


def test_two_processes_union_equals_single_process():
    single = list(loader("1:3", epochs=1, steps_per_epoch=60))
    parts = [
        list(loader("1:3", epochs=1, steps_per_epoch=60, process_index=p, process_count=2))
        for p in range(2)
    ]
    for s, p0, p1 in zip(single, *parts, strict=True):
        assert p0["image"].shape[0] == 8
        for k in ("image", "label", "source", "weight", "index"):
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), s[k])


def test_bad_arguments():
    with pytest.raises(ValueError, match="no \\(non-empty\\) synthetic"):
        MixedLoader(REAL, None, batch_size=8, schedule=0.5, epochs=1, seed=0,
                    process_index=0, process_count=1)  # fmt: skip
    with pytest.raises(ValueError, match="not divisible by process_count 3"):
        loader(process_count=3)
    with pytest.raises(ValueError, match="mismatched shapes"):
        odd = ArraySource(10, 1)
        odd.__class__ = type("Odd", (ArraySource,), {
            "__getitem__": lambda s, i: {**ArraySource.__getitem__(s, i),
                                          "image": np.zeros((3, 3, 3), np.uint8)}})  # fmt: skip
        next(iter(MixedLoader(REAL, odd, batch_size=8, schedule=0.5, epochs=1, seed=0,
                              process_index=0, process_count=1)))  # fmt: skip


@pytest.mark.slow
def test_real_zip_and_store_with_worker_processes(cifar_zip, tmp_path):
    cfg = ml_collections.ConfigDict(
        dict(path=str(cifar_zip), image_size=32, channels=3, per_class=6, subset_seed=0)
    )
    real = open_real_source(cfg, "train")
    assert len(real) == 60
    with StoreWriter(tmp_path, method="toy", process_index=0, shard_size=16) as w:
        for i in range(40):
            w.add(f"k{i}", np.full((32, 32, 3), i, np.uint8), i % 10, source=3)
    store = SyntheticStore(tmp_path)
    kw = dict(batch_size=12, schedule="1:1", epochs=2, seed=3, process_index=0, process_count=1)
    plain = list(MixedLoader(real, store, **kw))
    assert len(plain) == 10 and plain[0]["image"].shape == (12, 32, 32, 3)
    assert set(np.unique(np.concatenate([b["source"] for b in plain]))) == {0, 3}
    with MixedLoader(real, store, num_workers=2, **kw) as workers:
        assert_same_stream(list(workers), plain)
