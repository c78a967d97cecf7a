"""``augdiff run``: stage bookkeeping, derived configs, report, experiment configs, and the
end-to-end guarantees of issue 7 (report numbers come from the run; a second start redoes
nothing; a run killed during training resumes to the uninterrupted result)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import ml_collections
import numpy as np
import pytest

from augdiff.config import ConfigError, load_config, resolve_path
from augdiff.data.schedules import parse_share
from augdiff.pipeline import book, run, stages, wiring
from augdiff.pipeline.report import fmt_pct, parse_results_table

REPO = pathlib.Path(__file__).resolve().parents[2]

EXPERIMENTS = {
    "quickstart.py": ["default", "train_generator", "online", "test"],
    "exp_seed000_diffusemix.py": ["smoke", "vanilla", "baseline", "dm_lin", "dm_warm", "dm_step",
                                  "hybrid_0.10_0.20", "fractal_0.20_lsf0.80", "shb", "random"],
    "exp_seed001_augcond.py": ["smoke", "fewshot", "longtail", "fewshot_smoke",
                               "longtail_smoke"],
    "exp_seed003_diffinv.py": ["smoke", "default", "lowdata"],
    "exp_seed004_casd.py": ["smoke", "casd", "dm", "sda", "casd_n500", "sda_n1000_mismatch"],
}


def _load(name: str, variant: str) -> ml_collections.ConfigDict:
    return load_config(f"{REPO / 'augdiff' / 'configs' / name}:{variant}")


# --------------------------------------------------------------------------------------------
# Experiment configs


@pytest.mark.parametrize(
    "name,variant", [(n, v) for n, vs in EXPERIMENTS.items() for v in vs])
def test_experiment_config_loads_and_stages_are_valid(name, variant):
    c = _load(name, variant)
    stages = wiring.validate_stages(c)
    assert stages[-1] == "report" and stages[0] == "prepare"
    for field in ("workdir", "seed", "data", "mesh"):
        assert field in c
    assert "data" in c.mesh.keys() and "fsdp" in c.mesh.keys()
    c.workdir = "/tmp/augdiff-test-derive"
    # Every derived config whose base file exists can be built: overrides name real fields.
    if set(stages) & set(wiring.TRAIN_STAGES):
        for kind in ("real", "synthetic", "mixed"):
            sub = wiring.classifier_config(c, kind, c.seeds[0], num_real=1000,
                                           num_synthetic=500, store="/tmp/s")
            assert sub.seed == c.seeds[0] and sub.workdir.endswith(f"seed_{c.seeds[0]}")
    if "evaluate" in stages:
        sub = wiring.evaluate_config(c, store="/tmp/s", extractor_checkpoint="/tmp/ck")
        assert sub.evaluate.store == "/tmp/s"
        assert sub.extractor.image_size == c.data.image_size
    if "generate" in stages:
        spec = str(c.generator.config)
        if os.path.isfile(resolve_path(spec.partition(":")[0])):
            sub = (wiring.generator_config(c) if c.generator.kind == "edm"
                   else wiring.method_config(c))
            if c.generator.get("checkpoint", ""):  # user / shipped weights are read in place
                assert sub.workdir == resolve_path(str(c.generator.checkpoint))
                assert os.path.isdir(os.path.join(sub.workdir, "checkpoints"))
            else:
                assert sub.workdir.startswith("/tmp/augdiff-test-derive")
        else:  # a method config that does not exist yet: a clear error naming it
            with pytest.raises(ConfigError, match=spec.partition(":")[0]):
                wiring.method_config(c)


def test_bad_stage_lists_are_named():
    c = _load("quickstart.py", "test")
    c.stages = ("prepare", "report", "generate")
    with pytest.raises(ConfigError, match="order"):
        wiring.validate_stages(c)
    c.stages = ("prepare", "train_synthetic", "report")
    with pytest.raises(ConfigError, match="generate"):
        wiring.validate_stages(c)
    c.stages = ("prepare", "trian_real", "report")
    with pytest.raises(ConfigError, match="trian_real"):
        wiring.validate_stages(c)
    c.stages = ("prepare", "generate", "report")
    with pytest.raises(ConfigError, match="train_generator"):
        wiring.validate_stages(c)
    c.stages = ("prepare", "train_real", "train_real", "report")
    with pytest.raises(ConfigError, match="twice"):
        wiring.validate_stages(c)


def test_unknown_override_is_named():
    c = _load("quickstart.py", "test")
    c.workdir = "/tmp/augdiff-test-derive"
    c.classifier.overrides.model = ml_collections.ConfigDict({"widht": 8})
    with pytest.raises(ConfigError, match="classifier.overrides.model.widht"):
        wiring.classifier_config(c, "real", 0, num_real=100)


def test_derived_configs_wire_stages_together():
    c = _load("quickstart.py", "test")
    c.workdir = "/tmp/wd"
    gen = wiring.generator_config(c)
    assert gen.workdir == "/tmp/wd/train_generator"
    assert gen.sample.store == "/tmp/wd/generate/store"
    assert gen.num_samples == c.generator.num_samples
    assert gen.data.per_class == c.data.per_class and gen.data.image_size == 16
    assert gen.model.class_conditional and gen.mode == "dm"

    bs = int(wiring.classifier_config(c, "real", 0, num_real=200).batch_size)
    real = wiring.classifier_config(c, "real", 3, num_real=200)
    assert real.synthetic.path == "" and real.steps_per_epoch == 200 // bs and real.seed == 3
    syn = wiring.classifier_config(c, "synthetic", 0, num_real=200, num_synthetic=96,
                                   store="/s")
    assert syn.synthetic.path == "/s" and parse_share(syn.synthetic.schedule.rho) == 1.0
    assert syn.steps_per_epoch == 96 // bs
    mixed = wiring.classifier_config(c, "mixed", 0, num_real=200, num_synthetic=40, store="/s")
    # 'union': the share of training on real ∪ synthetic, n_syn / (n_real + n_syn).
    assert parse_share(mixed.synthetic.schedule.rho) == pytest.approx(40 / 240)
    assert mixed.steps_per_epoch == 240 // bs

    ev = wiring.evaluate_config(c, store="/s", extractor_checkpoint="/ck")
    assert ev.extractor.checkpoint == "/ck" and ev.extractor.classifier == real.model.name
    assert ev.extractor.width == real.model.width and ev.workdir == "/tmp/wd/evaluate"


def test_train_mixed_with_mixed_online_samples_the_generator():
    """``mixed.online``: train_mixed gets ``synthetic.online`` (the shipped generator by
    default), no store, one pass over the real images per epoch; without a checkpoint to
    sample, the stage list is refused with a line naming the fix."""
    c = _load("quickstart.py", "online")
    c.workdir = "/tmp/wd"
    c.mixed.online.num_steps, c.mixed.online.refresh_every = 4, 3
    assert "generate" in wiring.validate_stages(c)
    mixed = wiring.classifier_config(c, "mixed", 1, num_real=640, num_synthetic=500,
                                     store="/s")
    on = mixed.synthetic.online
    assert mixed.synthetic.path == "" and on.kind == "edm"
    assert on.checkpoint == str(REPO / "augdiff" / "assets" / "generator_cifar10")
    assert (on.num_steps, on.refresh_every, on.share) == (4, 3, 0.5)
    assert mixed.steps_per_epoch == 640 // int(mixed.batch_size)
    # The store rows still get the store; the real rows nothing synthetic.
    assert wiring.classifier_config(c, "synthetic", 0, num_real=640, num_synthetic=500,
                                    store="/s").synthetic.online.kind == "none"
    # No generate stage needed for train_mixed alone.
    c.stages = ("prepare", "train_real", "train_mixed")
    wiring.validate_stages(c)
    c.generator.checkpoint = ""
    with pytest.raises(ConfigError, match="mixed.online.checkpoint"):
        wiring.validate_stages(c)
    c.mixed.online.checkpoint = "/gen"
    assert wiring.classifier_config(c, "mixed", 0, num_real=64).synthetic.online.checkpoint \
        == "/gen"
    c.mixed.online.kind = "none"  # back to the store
    with pytest.raises(ConfigError, match="generate"):
        wiring.validate_stages(c)


def test_training_stages_hand_the_online_sources_to_the_trainer(tmp_path, monkeypatch):
    """The wire between the stage and the trainer: ``train_mixed`` of the ``online`` variant
    calls ``train_and_evaluate`` with the derived config asking for online rows *and* the
    sources that make them (``augdiff.methods.online.build``); the trainer itself knows no
    method."""
    from augdiff.methods import online

    seen = []

    def fake_train(sub, **kwargs):
        seen.append((sub, kwargs))
        return {"test_top1": 0.5, "test_top5": 0.9, "train_loss": 1.0}

    monkeypatch.setattr(stages, "train_and_evaluate", fake_train)
    c = _load("quickstart.py", "online")
    c.workdir = str(tmp_path)
    c.seeds = (3,)
    outputs = {"prepare": {"num_train": 640}, "generate": {"num_images": 500, "store": "/s"}}
    stage_book = book.StageBook(str(tmp_path))
    book.StageBook.start(stage_book, "train_mixed", "fp", {})
    stages.STAGE_FUNCTIONS["train_mixed"](c, outputs, book.Units(stage_book, "train_mixed",
                                                                 print))
    (sub, kwargs), = seen
    assert sub.synthetic.online.kind == "edm" and sub.seed == 3
    assert kwargs["online"] is online.build


def test_seed_statistics_closed_form():
    per = {f"seed_{i}": {"test_top1": a, "test_top5": b}
           for i, (a, b) in enumerate([(0.5, 0.9), (0.6, 0.8), (0.7, 1.0)])}
    s = stages.seed_statistics(per)
    assert s["test_top1_mean"] == pytest.approx(0.6)
    assert s["test_top1_std"] == pytest.approx(0.1)  # sqrt(((.1)^2 + 0 + (.1)^2) / 2)
    assert s["test_top5_std"] == pytest.approx(0.1)
    one = stages.seed_statistics({"seed_0": {"test_top1": 0.3, "test_top5": 0.4}})
    assert one["test_top1_std"] == 0.0 and one["num_seeds"] == 1
    assert fmt_pct(0.6, 0.1) == "60.00 ± 10.00"


# --------------------------------------------------------------------------------------------
# Bookkeeping with stand-in stage functions (fast)


def _fake_stages(calls: list[str]):
    def make(name):
        def fn(config, outputs, units):
            calls.append(name)
            return {"stage": name, "upstream": sorted(outputs)}
        return fn

    return {s: make(s) for s in wiring.STAGES}


def test_bookkeeping_skips_done_stages_and_names_changed_fields(tmp_path):
    c = _load("quickstart.py", "test")
    c.workdir = str(tmp_path / "run")
    c.stages = ("prepare", "train_generator", "generate", "report")
    calls: list[str] = []
    log: list[str] = []
    out = run.run_experiment(c, stage_functions=_fake_stages(calls), log=log.append)
    assert calls == ["prepare", "train_generator", "generate", "report"]
    assert out["generate"]["upstream"] == ["prepare", "train_generator"]
    book = tmp_path / "run" / "stages.json"
    before = (book.read_bytes(), book.stat().st_mtime_ns)

    calls.clear()
    log.clear()
    run.run_experiment(c, stage_functions=_fake_stages(calls), log=log.append)
    assert calls == []
    assert log == [f"skipping {s}: done" for s in c.stages]
    assert (book.read_bytes(), book.stat().st_mtime_ns) == before

    # A changed generator config is an error naming the field, not a silent reuse.
    c.generator.overrides.train.lr = 5e-3
    with pytest.raises(ConfigError, match="train.lr"):
        run.run_experiment(c, stage_functions=_fake_stages(calls), log=log.append)
    # ... unless that stage is started over; every later stage is redone with it.
    c.rerun = "train_generator"
    run.run_experiment(c, stage_functions=_fake_stages(calls), log=log.append)
    assert calls == ["train_generator", "generate", "report"]


def test_killed_stage_is_resumed_and_new_seeds_only_train_new_seeds(tmp_path, monkeypatch):
    trained: list[str] = []

    def fake_train(config, **kwargs):
        trained.append(os.path.basename(config.workdir))
        return {"test_top1": 0.1 * (config.seed + 1), "test_top5": 0.5, "train_loss": 1.0,
                "epochs": [{}], "steps_per_epoch": config.steps_per_epoch}

    monkeypatch.setattr(stages, "train_and_evaluate", fake_train)
    c = _load("quickstart.py", "test")
    c.workdir = str(tmp_path / "run")
    c.stages = ("prepare", "train_real")
    c.seeds = (0, 1)
    calls: list[str] = []
    fns = {"prepare": _fake_stages(calls)["prepare"]}

    # Simulate a kill after seed 0: the stage stays 'running' with one finished unit.
    boom = {"n": 0}

    def crash_second(config, **kwargs):
        boom["n"] += 1
        if boom["n"] == 2:
            raise KeyboardInterrupt("killed")
        return fake_train(config)

    monkeypatch.setattr(stages, "train_and_evaluate", crash_second)
    with pytest.raises(KeyboardInterrupt):
        run.run_experiment(c, stage_functions=fns, log=lambda m: None)
    rec = json.loads((tmp_path / "run" / "stages.json").read_text())["stages"]["train_real"]
    assert rec["status"] == "running" and list(rec["units"]) == ["seed_0"]

    monkeypatch.setattr(stages, "train_and_evaluate", fake_train)
    trained.clear()
    out = run.run_experiment(c, stage_functions=fns, log=lambda m: None)
    assert trained == ["seed_1"]
    assert out["train_real"]["test_top1_mean"] == pytest.approx(0.15)

    c.seeds = (0, 1, 2)
    trained.clear()
    out = run.run_experiment(c, stage_functions=fns, log=lambda m: None)
    assert trained == ["seed_2"] and out["train_real"]["num_seeds"] == 3


# --------------------------------------------------------------------------------------------
# End to end (real CIFAR-10 images, tiny models)


@pytest.fixture(scope="session")
def tiny_zip(cifar_zip, tmp_path_factory) -> pathlib.Path:
    """20 train + 20 test images per class of the real CIFAR-10 zip, same layout."""
    out = tmp_path_factory.mktemp("data") / "cifar10-tiny.zip"
    taken: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(cifar_zip) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name in sorted(src.namelist()):
            parts = name.split("/")
            if len(parts) != 4 or not parts[3].endswith(".jpg"):
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < 20:
                taken[key] = taken.get(key, 0) + 1
                dst.writestr(name, src.read(name))
    return out


def _cmd(workdir: pathlib.Path, data: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "augdiff.cli", "run", "--config",
            f"{REPO / 'augdiff' / 'configs' / 'quickstart.py'}:test", f"--config.workdir={workdir}",
            f"--config.data.path={data}"]


def _run(workdir: pathlib.Path, data: pathlib.Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(workdir, data), cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def finished_run(tiny_zip, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("qs") / "uninterrupted"
    _run(workdir, tiny_zip)
    return workdir


def _stages(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "stages.json").read_text())["stages"]


@pytest.mark.slow
def test_report_numbers_come_from_the_run(finished_run):
    report = (finished_run / "report.md").read_text()
    table = parse_results_table(report)
    assert set(table) == {"real only", "synthetic only", "real + synthetic"}
    rows = {"real only": "train_real", "synthetic only": "train_synthetic",
            "real + synthetic": "train_mixed"}
    for label, stage in rows.items():
        top1, top5 = [], []
        for seed_dir in sorted((finished_run / stage).glob("seed_*")):
            m = json.loads((seed_dir / "metrics.json").read_text())
            top1.append(m["test_top1"])
            top5.append(m["test_top5"])
        assert len(top1) == 2
        assert table[label]["top1_mean"] == pytest.approx(100 * np.mean(top1), abs=0.006)
        assert table[label]["top1_std"] == pytest.approx(100 * np.std(top1, ddof=1), abs=0.006)
        assert table[label]["top5_mean"] == pytest.approx(100 * np.mean(top5), abs=0.006)
        assert table[label]["top5_std"] == pytest.approx(100 * np.std(top5, ddof=1), abs=0.006)
    ev = json.loads((finished_run / "evaluate" / "metrics.json").read_text())
    ex = ev["extractor"]
    assert ex.startswith("classifier:") and ex in report
    gen_row = next(ln for ln in report.splitlines() if ln.startswith("| **generator"))
    assert f"| {ev['fid']['value']:.4f} | " in gen_row
    assert f"| {ev['coverage']['value']:.4f} | `{ex}` |" in gen_row
    floor = ev["controls"]["floor"]
    assert f"| floor: held-out real | {floor['fid']['value']:.4f} | " in report
    assert "ceiling: Gaussian noise" in report
    assert "**Trained here**" in report and "No pretrained weights" in report
    # Sample grids exist and are linked; the resolved config is embedded.
    links = [ln.split("](")[1].rstrip(") |") for ln in report.splitlines() if "![" in ln]
    assert all((finished_run / p).is_file() for p in links)
    assert len([p for p in links if p.startswith("figures/samples_0")]) == 10
    assert {"figures/curves.png", "figures/diffusion_loss.png"} <= set(links)
    assert '"workdir": "' + str(finished_run) in report
    assert all(r["status"] == "done" for r in _stages(finished_run).values())


@pytest.mark.slow
def test_second_start_redoes_nothing(finished_run, tiny_zip):
    c = _load("quickstart.py", "test")
    c.workdir = str(finished_run)
    c.data.path = str(tiny_zip)
    book = finished_run / "stages.json"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns)
              for p in (book, finished_run / "report.md", finished_run / "config.json")}

    def forbidden(name):
        def fn(*a, **k):
            raise AssertionError(f"stage {name} was called again")
        return fn

    log: list[str] = []
    t0 = time.time()
    run.run_experiment(c, stage_functions={s: forbidden(s) for s in wiring.STAGES},
                          log=log.append)
    assert time.time() - t0 < 10
    assert log == [f"skipping {s}: done" for s in wiring.stage_list(c)]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before


def _wait_then_kill(proc: subprocess.Popen, ready, timeout: float = 600) -> bool:
    """SIGKILL ``proc`` (its own process group) once ``ready()``; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError("the run never reached the kill point")


def _checkpoint_steps(path: pathlib.Path) -> list[int]:
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _store_contents(store: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    from augdiff.data.store import SyntheticStore

    s = SyntheticStore(store)
    return {s.keys[i]: (np.asarray(s[i]["image"]).tobytes(), int(s[i]["label"]))
            for i in range(len(s))}


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(finished_run, tiny_zip, tmp_path):
    workdir = tmp_path / "killed"
    popen = dict(cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 start_new_session=True)
    total = 24  # EDM steps of the test variant

    # 1) Kill during EDM training, once a checkpoint short of the last one is durable.
    proc = subprocess.Popen(_cmd(workdir, tiny_zip), **popen)
    gen_ckpts = workdir / "train_generator" / "checkpoints"
    killed = _wait_then_kill(proc, lambda: any(s < total for s in _checkpoint_steps(gen_ckpts)))
    assert killed and _stages(workdir)["train_generator"]["status"] == "running"

    # 2) Kill during classifier training (train_real, seed 0) after its first checkpoint.
    proc = subprocess.Popen(_cmd(workdir, tiny_zip), **popen)
    cls_ckpts = workdir / "train_real" / "seed_0" / "checkpoints"
    killed = _wait_then_kill(proc, lambda: bool(_checkpoint_steps(cls_ckpts)))
    assert killed

    # 3) Start again: finishes.
    _run(workdir, tiny_zip)
    book = _stages(workdir)
    assert book["train_generator"]["attempts"] == 2 and book["train_real"]["attempts"] == 2
    assert all(r["status"] == "done" for r in book.values())
    resumed = json.loads((workdir / "train_generator" / "metrics.jsonl").read_text()
                         .splitlines()[-1])
    reference = json.loads((finished_run / "train_generator" / "metrics.jsonl").read_text()
                           .splitlines()[-1])
    assert resumed["step"] == reference["step"] == total
    assert resumed["loss"] == pytest.approx(reference["loss"], rel=1e-5)

    # Same store, byte for byte, and the same classifier / fidelity numbers.
    assert _store_contents(workdir / "generate" / "store") == _store_contents(
        finished_run / "generate" / "store")
    for stage in ("train_real", "train_synthetic", "train_mixed"):
        for seed in (0, 1):
            a = json.loads((workdir / stage / f"seed_{seed}" / "metrics.json").read_text())
            b = json.loads((finished_run / stage / f"seed_{seed}" / "metrics.json").read_text())
            for k in ("test_top1", "test_top5", "train_loss"):
                assert a[k] == pytest.approx(b[k], rel=1e-5), (stage, seed, k)
    a = json.loads((workdir / "evaluate" / "metrics.json").read_text())
    b = json.loads((finished_run / "evaluate" / "metrics.json").read_text())
    for k in ("fid", "precision", "recall", "density", "coverage"):
        assert a[k]["value"] == pytest.approx(b[k]["value"], rel=1e-4, abs=1e-6), k
    assert parse_results_table((workdir / "report.md").read_text()) == parse_results_table(
        (finished_run / "report.md").read_text())


@pytest.mark.slow
def test_pca_stage_and_its_report_section(finished_run, tiny_zip, tmp_path):
    from augdiff.pipeline.report import write_report

    c = _load("quickstart.py", "test")
    c.workdir = str(tmp_path / "pca_run")
    c.data.path = str(tiny_zip)
    outputs = {k: v["outputs"] for k, v in _stages(finished_run).items() if k != "report"}
    stage_book = book.StageBook(str(tmp_path), writer=False)
    pca = stages.stage_pca(c, outputs, book.Units(stage_book, "pca", print))
    assert pathlib.Path(pca["plot"]).is_file()
    r = pca["explained_variance_ratio"]
    assert len(r) == 2 and 1.0 >= r[0] >= r[1] >= 0.0
    assert pca["extractor"] == outputs["evaluate"]["extractor"]
    out = write_report(c, {**outputs, "pca": pca})
    text = pathlib.Path(out["report"]).read_text()
    assert "## PCA" in text and "![PCA](pca/pca.png)" in text
    assert parse_results_table(text) == parse_results_table(
        (finished_run / "report.md").read_text())


def test_changed_fields_ignore_fields_added_since_the_stage_ran():
    old = {"train": {"lr": 1e-3, "batch_size": 64}, "sample": {"steps": 18}}
    new = {"train": {"lr": 2e-3, "batch_size": 64, "new_knob": 1}, "sample": {"steps": 18},
           "extra": {"x": 1}}
    assert book.changed_fields(old, new) == ["train.lr"]
    assert book.changed_fields(old, {**old, "extra": 3}) == []
