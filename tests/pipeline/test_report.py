"""``report.md``, ``results.json`` / ``results.csv`` and the figures of a run, written from a
tiny run folder built here on disk (stage records, per-seed ``metrics.json``, an image folder,
a synthetic store, an EDM ``metrics.jsonl``): no training, a few seconds."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from augdiff.config import load_config
from augdiff.data.store import StoreWriter
from augdiff.pipeline import book
from augdiff.pipeline.report import labelled_class_grid, parse_results_table, write_report

REPO = pathlib.Path(__file__).resolve().parents[2]
CLASSES = ["daisy", "rose", "tulip"]
# top-1 per seed (fractions): mixed overlaps real; synthetic is clearly below real
TOP1 = {"train_real": [0.50, 0.55, 0.60], "train_mixed": [0.52, 0.54, 0.63],
        "train_synthetic": [0.30, 0.36, 0.40]}
RUN_ORDER = ["prepare", "train_generator", "generate", "train_real", "train_synthetic",
             "train_mixed", "report"]


def _png(path: pathlib.Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture()
def run_folder(tmp_path):
    """A finished-looking run of ``quickstart.py:test`` on a 3-class folder ``flowers``."""
    data = tmp_path / "flowers"
    for split, n in (("train", 4), ("test", 2)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                _png(data / split / name / f"{i}.png", 40 * c + 10 * i)
    wd = tmp_path / "run"
    c = load_config(f"{REPO / 'augdiff' / 'configs' / 'quickstart.py'}:test")
    c.workdir = str(wd)
    c.data.path = str(data)
    c.data.per_class = 0
    c.seeds = (0, 1, 2)
    c.stages = tuple(RUN_ORDER)

    store = wd / "generate" / "store"
    with StoreWriter(str(store), method="edm/dm", config={"model": None}) as w:
        for i in range(6):
            w.add(f"{i:08d}", np.full((8, 8, 3), 30 * i, np.uint8), i % 3)
    gen_dir = wd / "train_generator"
    gen_dir.mkdir(parents=True)
    (gen_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 25)))
    (gen_dir / "tb").mkdir()

    outputs = {
        "prepare": {"description": f"image folder {data}", "class_names": CLASSES,
                    "num_classes": 3, "num_train": 12, "num_test": 6,
                    "counts_per_class": {n: 4 for n in CLASSES},
                    "subset_file": str(wd / "prepare" / "subset.json")},
        "train_generator": {"workdir": str(gen_dir), "mode": "dm", "classes": "all",
                            "synthetic": "", "source_label": 0, "class_conditional": True,
                            "preset": "tiny", "num_params": 1234, "steps": 24,
                            "images_seen": 768, "final_loss": 0.0833},
        "generate": {"store": str(store), "num_images": 6, "method": "edm/dm", "kind": "edm",
                     "checkpoint_step": 24, "sampler": "heun", "sampler_steps": 4},
    }
    for stage, values in TOP1.items():
        seeds = {}
        for seed, top1 in enumerate(values):
            sd = wd / stage / f"seed_{seed}"
            (sd / "tb").mkdir(parents=True)
            epochs = [{"epoch": 1, "train_loss": 1.5 - 0.1 * seed},
                      {"epoch": 2, "train_loss": 1.0 - 0.1 * seed, "test_top1": top1}]
            (sd / "metrics.json").write_text(json.dumps({"epochs": epochs}))
            seeds[f"seed_{seed}"] = {
                "seed": seed, "workdir": str(sd), "metrics": str(sd / "metrics.json"),
                "test_top1": top1, "test_top5": 1.0, "train_loss": 1.0,
                "test_class_top1": [top1, top1 / 2, 0.25 * seed], "test_class_count": [2, 2, 2],
                "skipped_images": {"train": 2, "test": 1, "files": ["train/rose/bad.png"]}}
        outputs[stage] = {"kind": stage[6:], "seeds": seeds}
    # stages.json as the loop writes it (sorted keys on disk), the report stage running
    sb = book.StageBook(str(wd))
    for stage in RUN_ORDER:
        sb.start(stage, "fp", {})
        if stage != "report":
            sb.finish(stage, outputs.get(stage, {}), 1.5)
    return c, outputs, wd


def _section(text: str, head: str) -> list[str]:
    lines = text.splitlines()
    i = lines.index(head)
    out = []
    for ln in lines[i + 1:]:
        if ln.startswith("## "):
            break
        out.append(ln)
    return out


def test_report_of_a_tiny_run_folder(run_folder):
    c, outputs, wd = run_folder
    out = write_report(c, outputs)
    text = pathlib.Path(out["report"]).read_text()
    lines = text.splitlines()

    # Title and description from the config and the data actually read, no fixed claims.
    assert lines[0] == ("# quickstart (test): flowers, 3 classes, 12 training images — an EDM "
                        "generator trained in this run (24 steps)")
    assert "CIFAR" not in "\n".join(lines[:4])
    assert "Config `quickstart` (variant `test`); real data `flowers`" in lines[2]
    assert "12 training images in 3 classes (4–4 per class)" in lines[2]
    assert "Skipped as unreadable (`data.skip_corrupt`): train 2, test 1 (files: " \
           "`train/rose/bad.png`)." in text

    # Results: top-1 only (3 classes), mean ± std (ddof 1) and n, parsed back.
    assert "| training data | top-1 (%) | seeds | top-1 per seed (%) |" in text
    assert "top-5 (%)" not in text
    table = parse_results_table(text)
    for stage, label in (("train_real", "real only"), ("train_mixed", "real + synthetic"),
                         ("train_synthetic", "synthetic only")):
        v = np.asarray(TOP1[stage])
        assert table[label] == pytest.approx(
            {"top1_mean": 100 * v.mean(), "top1_std": 100 * v.std(ddof=1)}, abs=0.006)
        assert f"| {label} | " in text and "| 3 | " in text

    # Comparisons: overlapping seeds are "within noise"; a clear gap names the better arm.
    mixed = next(ln for ln in lines if ln.startswith("| real + synthetic vs real only |"))
    assert mixed.endswith("| 3 | **within noise** |")
    syn = next(ln for ln in lines if ln.startswith("| synthetic only vs real only |"))
    assert syn.endswith("| 3 | **real only better** |")

    # Curves: a real PNG of a sensible size; the diffusion loss too; TensorBoard named.
    for name, min_size in (("curves.png", (800, 300)), ("diffusion_loss.png", (400, 300))):
        p = wd / "figures" / name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        assert f"](figures/{name})" in text
    assert "`train_generator/tb`" in text and "`train_mixed/seed_2/tb`" in text

    # Per-class accuracy per arm (mean over seeds), class names as rows.
    per = _section(text, "## Per-class accuracy")
    rose = next(ln for ln in per if ln.startswith("| rose |"))
    cells = [x.strip() for x in rose.strip("|").split("|")]
    assert cells[1] == "2"
    assert float(cells[2]) == pytest.approx(100 * np.mean(TOP1["train_real"]) / 2, abs=0.006)

    # Stages in run order, the report stage included.
    st = [ln.split("|")[1].strip() for ln in _section(text, "## Stages") if ln.startswith("| ")]
    assert st[1:] == RUN_ORDER  # st[0] is the header
    assert "| report | (writing this report) | 1 | — |" in text

    # Samples by class: readable size, one row per class.
    with Image.open(wd / "figures" / "samples_by_class.png") as im:
        assert im.size[1] >= 3 * 64


def test_results_json_and_csv_hold_the_inputs(run_folder):
    stats = pytest.importorskip("scipy.stats")
    c, outputs, wd = run_folder
    write_report(c, outputs)
    res = json.loads((wd / "results.json").read_text())
    assert res["config"] == {"name": "quickstart", "variant": "test"}
    assert res["data"]["name"] == "flowers" and res["data"]["class_names"] == CLASSES
    assert res["data"]["skipped_images"]["train"] == 2
    for stage, values in TOP1.items():
        arm = res["arms"][stage]
        assert [arm["seeds"][f"seed_{i}"]["test_top1"] for i in range(3)] == values
        assert arm["test_top1"]["n"] == 3
        assert arm["test_top1"]["mean"] == pytest.approx(np.mean(values))
        assert arm["test_top1"]["std"] == pytest.approx(np.std(values, ddof=1))
        assert arm["seeds"]["seed_1"]["test_class_top1"] == [values[1], values[1] / 2, 0.25]
    comps = {(x["a"], x["b"]): x for x in res["comparisons"]}
    m = comps[("real + synthetic", "real only")]
    d = np.subtract(TOP1["train_mixed"], TOP1["train_real"])
    half = float(stats.t.ppf(0.975, 2)) * d.std(ddof=1) / math.sqrt(3)
    assert m["mean"] == pytest.approx(d.mean())
    assert (m["low"], m["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert m["verdict"] == "within noise" and m["n"] == 3
    assert comps[("synthetic only", "real only")]["verdict"] == "real only better"
    assert [s["stage"] for s in res["stages"]] == RUN_ORDER
    assert res["per_class"]["train_real"]["rose"] == pytest.approx(np.mean(TOP1["train_real"]) / 2)
    assert res["curves"]["train_mixed"]["seed_0"][1]["test_top1"] == TOP1["train_mixed"][0]

    with open(wd / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seeds = {(r["name"], r["seed"]): float(r["value"]) for r in rows
             if r["section"] == "seed" and r["metric"] == "test_top1"}
    assert seeds[("real + synthetic", "seed_2")] == TOP1["train_mixed"][2]
    assert len(seeds) == 9
    comp = next(r for r in rows if r["section"] == "comparison"
                and r["name"] == "real + synthetic vs real only")
    assert comp["verdict"] == "within noise" and comp["n"] == "3"
    assert float(comp["low"]) == pytest.approx(d.mean() - half)
    stage_rows = [r["name"] for r in rows if r["section"] == "stage"]
    assert stage_rows == RUN_ORDER


def test_one_seed_says_no_interval_and_top5_shows_above_five_classes(run_folder):
    c, outputs, wd = run_folder
    for stage in TOP1:
        outputs[stage]["seeds"] = {"seed_0": outputs[stage]["seeds"]["seed_0"]}
    names = [f"c{i}" for i in range(6)]
    outputs["prepare"] = {**outputs["prepare"], "num_classes": 6, "class_names": names}
    c.report.title = "My paper draft"
    text = pathlib.Path(write_report(c, outputs)["report"]).read_text()
    lines = text.splitlines()
    assert lines[0] == "# My paper draft"
    assert lines[2].startswith("Run: quickstart (test): flowers, 6 classes")
    assert "| training data | top-1 (%) | top-5 (%) | seeds |" in text
    assert "| real only | 50.00 ± — | 100.00 ± — | 1 | 50.00 |" in text
    mixed = next(ln for ln in lines if ln.startswith("| real + synthetic vs real only |"))
    assert mixed.endswith("| — | 1 | **1 seed: no interval** |")
    assert "## Per-class accuracy" not in text  # 3 recorded classes do not match 6 names


def test_labelled_class_grid_rows_are_classes(tmp_path):
    class Store:
        labels = np.asarray([0, 1, 0, 2, 1])

        def __getitem__(self, i):
            return {"image": np.full((16, 16, 3), 50 * i, np.uint8)}

    path = labelled_class_grid(Store(), ["a", "b", "c"], str(tmp_path / "g.png"), size=64)
    with Image.open(path) as im:
        w, h = im.size
        grid = np.asarray(im.convert("RGB"))
    assert h == 3 * 66 + 2  # three rows of 64 px with 2-px gaps
    # row "a" holds images 0 and 2, upscaled 4x, after the label column, 2-px gaps
    x0 = w - 2 * 66
    assert (grid[2:66, x0:x0 + 64] == 0).all() and (grid[2:66, x0 + 66:x0 + 130] == 100).all()
    assert (grid[68:132, x0:x0 + 64] == 50).all()  # row "b": image 1
    # the label column carries dark text pixels
    assert (grid[2:66, :x0 - 2] < 128).any()


def test_training_stage_records_per_class_and_skipped_images_for_the_report(tmp_path,
                                                                           monkeypatch):
    """The wire trainer -> stage unit (stages.json) -> report: per-class accuracy and the
    skipped-image counts the classifier returns reach the report's tables."""
    from augdiff.pipeline import stages

    def fake_train(sub, **kwargs):
        return {"test_top1": 0.5, "test_top5": 1.0, "train_loss": 1.0,
                "test_class_top1": [0.75, 0.25, 0.5], "test_class_count": [4, 4, 2],
                "skipped_images": {"train": 1, "test": 0, "files": ["train/tulip/x.gif"]}}

    monkeypatch.setattr(stages, "train_and_evaluate", fake_train)
    c = load_config(f"{REPO / 'augdiff' / 'configs' / 'quickstart.py'}:test")
    c.workdir = str(tmp_path)
    c.seeds = (0,)
    c.stages = ("prepare", "train_real", "report")
    sb = book.StageBook(str(tmp_path))
    sb.start("train_real", "fp", {})
    out = stages.STAGE_FUNCTIONS["train_real"](
        c, {"prepare": {"num_train": 64}}, book.Units(sb, "train_real", print))
    unit = json.loads((tmp_path / "stages.json").read_text())["stages"]["train_real"]["units"][
        "seed_0"]
    assert unit["test_class_top1"] == [0.75, 0.25, 0.5] and unit["test_class_count"] == [4, 4, 2]
    assert unit["skipped_images"]["train"] == 1
    prep = {"description": "d", "class_names": CLASSES, "num_classes": 3, "num_train": 10,
            "num_test": 10, "counts_per_class": {n: 3 for n in CLASSES},
            "subset_file": str(tmp_path / "prepare" / "subset.json")}
    text = pathlib.Path(write_report(c, {"prepare": prep, "train_real": out})["report"]
                        ).read_text()
    assert "| daisy | 4 | 75.00 |" in text and "| tulip | 2 | 50.00 |" in text
    assert "Skipped as unreadable (`data.skip_corrupt`): train 1, test 0" in text
    assert "1 seed" in text  # n = 1 is said, not hidden behind a zero std
