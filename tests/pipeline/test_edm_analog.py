"""The seed 003 analog's table experiment (Diffusion Inversion on a class-conditional EDM) and
the report pieces added with it: row-restricted links, the table's column names, seed 004's
Table 2 over seeds with paired FID intervals, and the online experiment's verdicts. Expected
values are written here from the definitions (paired t interval: d̄ ± t₀.₉₇₅,ₙ₋₁ s_d/√n)."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
T975_2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def test_analog_rows_wiring_and_report(tmp_path, monkeypatch):
    """Synthetic rows generate with the edm_diffinv method (class / inverted), the 1:1 rows
    adopt exactly those stores, the mixes reuse inverted's inversion, and report.md carries
    the analog's name, the paper's numbers for direction and a verdict per finding."""
    from augdiff.config import load_config
    from augdiff.pipeline import run, stages

    seen: dict = {}
    top1 = {"real": (0.40, 0.41, 0.42), "classcond": (0.20, 0.21, 0.22),
            "inverted": (0.25, 0.27, 0.26), "real_classcond": (0.40, 0.40, 0.41),
            "real_inverted": (0.43, 0.44, 0.45), "real_embed_mixup": (0.44, 0.44, 0.46),
            "real_embed_cutmix": (0.44, 0.45, 0.46),
            "real_embed_cutmix_dropout": (0.44, 0.45, 0.46)}

    def fake(stage):
        def fn(config, outputs, units):
            row = os.path.basename(str(config.workdir))
            seen.setdefault(row, []).append(stage)
            if stage == "generate":
                g = config.generator
                seen[f"{row}:gen"] = (str(g.kind), str(g.config), str(g.get("store", "")),
                                      str((g.overrides or {}).get("inversion", {}).get("dir",
                                                                                      "")))
                return {"store": str(tmp_path / row / "generate" / "store"), "num_images": 500}
            if stage.startswith("train"):
                vals = top1[row]
                return {"test_top1_mean": sum(vals) / 3, "test_top5_mean": 0.8,
                        "num_seeds": 3,
                        "seeds": {f"seed_{i}": {"test_top1": v} for i, v in enumerate(vals)}}
            return {}
        return fn

    for s in stages.STAGE_FUNCTIONS:
        monkeypatch.setitem(stages.STAGE_FUNCTIONS, s, fake(s))
    cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed003_edm_analog.py'}:cpu",
                      [f"workdir={tmp_path}"])
    out = run.run_experiment(cfg, log=lambda m: None)["rows"]
    assert seen["real"] == ["prepare", "train_real", "report"]
    assert seen["inverted"] == ["prepare", "generate", "train_synthetic", "report"]
    assert seen["real_inverted"] == ["prepare", "generate", "train_mixed", "report"]
    assert seen["classcond:gen"][:2] == ("method", "configs/edm_diffinv_cifar10.py:class")
    assert seen["inverted:gen"][:2] == ("method", "configs/edm_diffinv_cifar10.py:inverted")
    assert seen["real_classcond:gen"][:3] == (
        "store", "", str(tmp_path / "classcond" / "generate/store"))
    assert seen["real_inverted:gen"][2] == str(tmp_path / "inverted" / "generate/store")
    for mix in ("real_embed_mixup", "real_embed_cutmix", "real_embed_cutmix_dropout"):
        assert seen[f"{mix}:gen"][3] == str(tmp_path / "inverted" / "generate/inversion")
    assert seen["inverted:gen"][3] == ""  # inverted makes its own inversion
    md = open(out["report"]).read()
    assert "Diffusion Inversion on a class-conditional EDM, not on Stable Diffusion" in md
    assert "| Training data | Conditioning | Synthetic share | Paper number from |" in md
    assert "| synthetic | inverted vector (DI) | 1 | seed 003 Table 7 | 94.60 |" in md
    # classcond < inverted: d = (5, 6, 4) points, s_d = 1 → 5 ± 4.30/√3 = 5 ± 2.48: reproduced
    half = T975_2 * 1.0 / math.sqrt(3)
    line = next(ln for ln in md.splitlines() if "`classcond` < `inverted`" in ln)
    assert f"{5 - half:+.2f} to {5 + half:+.2f}" in line and "**reproduced**" in line
    # inverted < real: real is higher: the claim holds
    assert "**reproduced**" in next(ln for ln in md.splitlines() if "`inverted` < `real`" in ln)
    # mixup < cutmix: d = (0, 1, 0): interval contains 0
    assert "**within noise**" in next(
        ln for ln in md.splitlines() if "`real_embed_mixup` < `real_embed_cutmix`" in ln)


def test_restricted_links_apply_only_to_their_rows(tmp_path):
    import ml_collections

    from augdiff.config import load_config
    from augdiff.pipeline.rows import row_config

    cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed003_edm_analog.py'}:cpu",
                      [f"workdir={tmp_path}"])
    done = {r: str(tmp_path / r) for r in ("classcond", "inverted")}
    assert str(row_config(cfg, "real_classcond", done).generator.store).endswith(
        "classcond/generate/store")
    assert str(row_config(cfg, "real_inverted", done).generator.store).endswith(
        "inverted/generate/store")
    assert str(row_config(cfg, "classcond", done).generator.overrides.inversion.dir) == ""
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.links = "real_inverted>generator.store=nosuchrow:generate/store"
    with pytest.raises(Exception, match="needs row 'nosuchrow' first"):
        row_config(bad, "real_inverted", done)
    row_config(bad, "real", done)  # a link restricted to other rows is not even read


def test_seed004_table2_over_seeds_states_paired_fid_intervals():
    from augdiff.pipeline import mismatch, tables

    def run(fid):
        return {"fid": fid, "ship_truck": 0.1, "plane_car": 0.2, "n": 300, "steps": 1,
                "train_s": 1.0, "sample_s": 1.0,
                "hist": {n: 0.1 for n in mismatch.CIFAR10}}

    fids = {"dm": (7.0, 7.5, 8.0), "sda_case1": (10.0, 9.8, 10.4),
            "casd_case1": (9.0, 9.0, 9.2)}
    results = {k: mismatch.seed_means({f"seed_{i}": run(f) for i, f in enumerate(v)})
               for k, v in fids.items()}
    assert results["sda_case1"]["fid"] == pytest.approx(10.0 + 0.2 / 3)
    assert results["sda_case1"]["fid_std"] == pytest.approx(
        math.sqrt(sum((x - (30.2 / 3)) ** 2 for x in (10.0, 9.8, 10.4)) / 2))
    found = mismatch.table2_findings(results, ["case1"])
    sda = next(f for f in found if f["rows"][1] == "sda_case1")
    d = [1.0, 0.8, 1.2]  # SDA − CASD
    mean, sd = sum(d) / 3, math.sqrt(sum((x - 1.0) ** 2 for x in d) / 2)
    assert sda["comparison"]["low"] == pytest.approx(mean - T975_2 * sd / math.sqrt(3))
    assert sda["verdict"] == "reproduced"  # CASD's FID below SDA's
    dm = next(f for f in found if f["rows"][1] == "dm")
    assert dm["verdict"] == "contradicted"  # CASD's FID is above DM's here
    out = {"cases": ["case1"], "fid_reference": "train", "extractor": "x",
           "classifier_test_top1": 0.5, "wall_s": 60.0, "seeds": [0, 1, 2],
           "real_hist": {n: 0.1 for n in mismatch.CIFAR10}, "findings": found,
           "paper": {"dm": {"case1": 11.28}, "sda": {"case1": 9.98}, "casd": {"case1": 4.10}},
           "results": results}
    md = tables.table2_report(out)
    assert f"| SDA | 10.07 ± {results['sda_case1']['fid_std']:.2f} (9.98) |" in md
    assert "CASD's FID below SDA's" in md and "**reproduced**" in md
    import ml_collections

    with pytest.raises(Exception, match="repeated"):
        mismatch.seeds_of(ml_collections.ConfigDict({"seed": 0, "seeds": (1, 1)}))
    # each seed trains and samples its DM / SDA / CASD with that seed
    from augdiff.config import load_config

    red = load_config(str(REPO / "augdiff/configs/exp_seed004_casd.py:table2_reduced"))
    assert tuple(red.seeds) == (0, 1, 2)
    c = mismatch.edm_config(red, mode="casd", workdir="/tmp/x", classes=mismatch.REAL_CLASSES,
                            first_per_class=125, num_samples=10, stores=["/a"], seed=2)
    assert (c.seed, c.sample.seed) == (2, 2)


def test_online_experiment_states_verdicts():
    spec = importlib.util.spec_from_file_location("online_experiment",
                                                  REPO / "tools" / "online_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = {"offline": {"seeds": {"seed_0": 25.0, "seed_1": 26.0, "seed_2": 24.0}},
            "online_fresh": {"seeds": {"seed_0": 27.0, "seed_1": 26.5, "seed_2": 25.0}},
            "online_wall": {"seeds": {"seed_0": 20.0, "seed_1": 21.0, "seed_2": 19.5}},
            "real": {"seeds": {"seed_0": 32.0, "seed_1": 31.0, "seed_2": 33.0}}}
    found = {tuple(f["rows"]): f for f in mod.findings(rows)}
    assert found[("offline", "online_fresh")]["verdict"] == "within noise"
    assert found[("online_wall", "offline")]["verdict"] == "reproduced"
    assert found[("offline", "real")]["verdict"] == "reproduced"
    assert ("offline", "online_count") not in found  # no such row: no claim read


@pytest.mark.slow
def test_ci_analog_end_to_end(cifar_small, tmp_path):
    """The ``ci`` profile through ``augdiff run`` on real CIFAR-10 images and the shipped
    generator: the inverted row inverts every image (group files), samples one image per
    image into its store with each parent's class and the analog's provenance, the mix row
    reuses that inversion (no second one), and report.md names the analog."""
    import numpy as np

    from augdiff.config import load_config
    from augdiff.data.sources import open_real_source
    from augdiff.data.store import SyntheticStore
    from augdiff.pipeline import run

    cfg = load_config(f"{REPO / 'augdiff' / 'configs' / 'exp_seed003_edm_analog.py'}:ci",
                      [f"workdir={tmp_path}", f"data.path={cifar_small}"])
    out = run.run_experiment(cfg, log=lambda m: None)["rows"]
    assert set(out["rows"]) == {"real", "inverted", "real_embed_cutmix_dropout"}
    inv = tmp_path / "inverted" / "generate" / "inversion"
    assert sorted(p.name for p in inv.iterdir()) == ["group-00000.npz", "group-00001.npz"]
    assert not (tmp_path / "real_embed_cutmix_dropout" / "generate" / "inversion").exists()
    for row, augment in (("inverted", "none"),
                         ("real_embed_cutmix_dropout", "embed_cutmix+dropout")):
        store = SyntheticStore(str(tmp_path / row / "generate" / "store"))
        assert len(store) == 20
        assert store.manifest["config"]["augment"] == augment
        assert store.manifest["config"]["generator_step"] == 4000
        parents = [int(store.provenance(i)["parent"]) for i in range(len(store))]
        assert sorted(parents) == list(range(20))
        # each image carries its parent's class (the real subset the row prepared)
        real = open_real_source(load_config(
            f"{REPO / 'augdiff' / 'configs' / 'edm_diffinv_cifar10.py'}:smoke",
            [f"data.path={cifar_small}"]).data, "train")
        assert np.asarray(store.labels).tolist() == [int(real.labels[p]) for p in parents]
    md = open(out["report"]).read()
    assert "not on Stable Diffusion" in md and "| inverted vectors beat" in md
