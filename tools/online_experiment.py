"""Online vs offline synthetic data on CIFAR-10 at quickstart scale: every row and seed of
``configs/online_cifar10.py``, then ``report.md`` (the question of seed 000 §4.6 / seed 003 §4.1).

    python tools/online_experiment.py --workdir runs/online_cifar10 --seeds 0,1,2

Per seed: ``augdiff sample`` writes the offline store (``store_seed_S``: the shipped generator,
the rows' Heun N, sample seed S, ``NUM_GENERATED`` images); ``augdiff train`` runs the rows
``real``, ``offline``, ``online_count`` and ``online_fresh``; then ``online_wall`` gets the
number of steps ``K`` whose wall time matches the offline row's (store sampling + training):

    K = (T_sample + T_steps(offline)) / t_step(online_fresh),   T_steps = train_loop_s − eval_s

(medians over the seeds, the test evaluations left out of both sides since every row makes the
same four), run as 4 epochs of ``max(1, round(K / 4))`` steps. Started again it skips every
finished run (``run.json`` written) and resumes an unfinished one from its checkpoint. Extra
``--set k=v`` pairs go to every ``augdiff train`` (e.g. ``--set data.path=DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from augdiff.analysis.compare import describe, finding_verdict, paired_comparison
from augdiff.configs import online_cifar10 as exp

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN_ROWS = ("real", "offline", "online_count", "online_fresh")
LABELS = {
    "real": "real only",
    "offline": "offline store of N images",
    "online_count": "online, same N generated images",
    "online_fresh": "online unbounded, same steps",
    "online_wall": "online unbounded, same wall time as offline",
}


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _run(cmd: list[str], log: str) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE)
    if rc:
        raise SystemExit(f"online_experiment: {' '.join(cmd[:3])} failed (rc {rc}); see {log}")
    return time.time() - t0


def sample_store(workdir: str, seed: int, log: str) -> dict:
    """The offline store of ``seed`` (``augdiff sample``), timed; skipped when done."""
    done = os.path.join(workdir, f"store_seed_{seed}.json")
    rec = _read(done)
    if rec is not None:
        return rec
    store = os.path.join(workdir, f"store_seed_{seed}")
    secs = _run([sys.executable, "-m", "augdiff.cli", "sample",
                 "--config", "configs/generator_cifar10.py",
                 f"--config.workdir={exp.GENERATOR}", f"--config.sample.store={store}",
                 f"--config.sample.seed={seed}", f"--config.num_samples={exp.NUM_GENERATED}",
                 "--config.sample.sampler=heun", f"--config.sample.num_steps={exp.NUM_STEPS}",
                 # one batch shape (no recompile for a short last batch)
                 f"--config.sample.batch_size={exp.NUM_GENERATED // 4}"],
                log)
    rec = {"store": store, "sample_s": secs, "images": exp.NUM_GENERATED}
    with open(done, "w") as f:
        json.dump(rec, f, indent=1)
    return rec


def train(workdir: str, row: str, seed: int, log: str, extra: list[str]) -> dict:
    """``augdiff train`` of ``row`` at ``seed``; its metrics and run record."""
    wd = os.path.join(workdir, row, f"seed_{seed}")
    if _read(os.path.join(wd, "run.json")) is None:
        _run([sys.executable, "-m", "augdiff.cli", "train",
              "--config", f"configs/online_cifar10.py:{row}", f"--config.seed={seed}",
              f"--config.workdir={wd}", "--config.progress=False", *extra], log)
    return {"metrics": _read(os.path.join(wd, "metrics.json")),
            "run": _read(os.path.join(wd, "run.json"))}


def steps_s(r: dict) -> float:
    return float(r["run"]["train_loop_s"]) - float(r["run"].get("eval_s", 0.0))


def report(workdir: str, res: dict, stores: dict, k: int | None, seeds: list[int]) -> str:
    lines = ["# Online vs offline synthetic data (CIFAR-10, quickstart scale)", "",
             f"Generator: the shipped class-conditional EDM (`{exp.GENERATOR}`), Heun "
             f"N = {exp.NUM_STEPS} (NFE {2 * exp.NUM_STEPS - 1}). Classifier: "
             "preact_resnet_tiny width 16, batch 64 (mixed rows: 32 real + 32 synthetic), "
             "1,000 real training images (100 per class) at 16², full 10,000-image test split. "
             "Test top-1 after the last epoch, mean ± sample std (ddof 1) over seeds "
             f"{', '.join(map(str, seeds))}.", "",
             "| row | generated images | classifier steps | test top-1 (%) | per seed (%) "
             "| wall: sampling + steps (s) | generator share of step time |",
             "|---|---|---|---|---|---|---|"]
    out = {}
    for row in (*TRAIN_ROWS, "online_wall"):
        runs = [res[row][s] for s in seeds if s in res.get(row, {})]
        runs = [r for r in runs if r["metrics"] and r["run"]]
        if not runs:
            continue
        top1 = [100 * float(r["metrics"]["test_top1"]) for r in runs]
        mean = statistics.mean(top1)
        std = statistics.stdev(top1) if len(top1) > 1 else 0.0
        steps = runs[0]["metrics"]["steps_per_epoch"] * len(runs[0]["metrics"]["epochs"])
        sample = statistics.median(stores[s]["sample_s"] for s in seeds
                                   if s in stores) if row == "offline" else 0.0
        wall = statistics.median(steps_s(r) for r in runs) + sample
        gen = [r["run"].get("generator_share") for r in runs]
        share = (f"{statistics.median(gen):.2f} (in line)" if gen[0] is not None else
                 (f"{sample / wall:.2f} (before training)" if row == "offline" else "0"))
        n_gen = (runs[0]["run"].get("generated_images", 0) if row.startswith("online")
                 else (exp.NUM_GENERATED if row == "offline" else 0))
        lines.append(f"| {LABELS[row]} (`{row}`) | {n_gen:,} | {steps} | {mean:.2f} ± "
                     f"{std:.2f} | {', '.join(f'{v:.2f}' for v in top1)} | {wall:.1f} "
                     f"| {share} |")
        out[row] = {"top1": top1, "mean": mean, "std": std, "steps": steps,
                    "generated": n_gen, "wall_s": wall, "share": share,
                    "seeds": {f"seed_{s}": 100 * float(res[row][s]["metrics"]["test_top1"])
                              for s in seeds if s in res.get(row, {})
                              and res[row][s]["metrics"]}}
    lines += ["", "Wall times are medians over seeds on the machine that ran them (test "
              "evaluations excluded; the offline row adds the `augdiff sample` wall time of "
              "its store, process start included). The generator share is the refreshes' wall "
              "time over the steps' wall time (`run.json`: `generator_s`, `train_loop_s - "
              "eval_s`)."]
    if k is not None:
        lines.append(f"`online_wall`: K = {k} steps planned from the medians of the offline "
                     "row's wall time and the online_fresh row's time per step.")
    found = findings(out)
    if found:
        lines += ["", "## Findings (Top-1, paired by seed)", "",
                  "Gap: row b minus row a in points, mean over the seeds both ran, with its "
                  "95 % Student-t interval. *Reproduced* / *contradicted*: the interval lies on "
                  "the claim's / the other side of 0; *within noise*: it contains 0.", "",
                  "| claim | b − a | verdict |", "|---|---|---|"]
        lines += [f"| {f['claim']} (`{f['rows'][0]}` < `{f['rows'][1]}`) | {f['text']} | "
                  f"**{f['verdict']}** |" for f in found]
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump({"rows": out, "k": k, "seeds": seeds, "findings": found}, f, indent=1)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text)
    return text


# Claims read against the seeds: (claim, "a<b": row a scores below row b).
CLAIMS = (
    ("fresh online images beat a fixed offline store at equal steps (the variety seed 000 "
     "§4.6 and seed 003 §4.1 point at)", "offline<online_fresh"),
    ("online generation with the same image count beats offline", "offline<online_count"),
    ("at equal wall time online generation loses to offline", "online_wall<offline"),
    ("mixing these synthetic images in costs accuracy against real only", "offline<real"),
)


def findings(rows: dict) -> list[dict]:
    """Each claim's paired difference b − a over the seeds both rows ran, with its 95 %
    interval (:func:`augdiff.analysis.compare.paired_comparison`) and a verdict in words."""
    out = []
    for claim, expr in CLAIMS:
        a, _, b = expr.partition("<")
        sa, sb = (rows.get(r, {}).get("seeds") or {} for r in (a, b))
        if not (set(sa) & set(sb)):
            continue
        comp = paired_comparison({k: v / 100 for k, v in sb.items()},
                                 {k: v / 100 for k, v in sa.items()}, a_label=b, b_label=a)
        out.append({"claim": claim, "rows": [a, b], "comparison": comp.to_dict(),
                    "text": describe(comp), "verdict": finding_verdict(comp, a_above_b=True)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/online_cifar10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="k=v for every augdiff train")
    a = ap.parse_args(argv)
    workdir = os.path.abspath(a.workdir)
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "log.txt")
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    extra = [f"--config.{kv}" for kv in a.set]
    res: dict = {row: {} for row in (*TRAIN_ROWS, "online_wall")}
    stores: dict = {}
    for seed in seeds:
        stores[seed] = sample_store(workdir, seed, log)
        for row in TRAIN_ROWS:
            more = [f"--config.synthetic.path={stores[seed]['store']}"] if row == "offline" else []
            res[row][seed] = train(workdir, row, seed, log, extra + more)
            report(workdir, res, stores, None, seeds)
    t_off = statistics.median(stores[s]["sample_s"] + steps_s(res["offline"][s]) for s in seeds)
    fresh = res["online_fresh"][seeds[0]]["metrics"]
    n_fresh = fresh["steps_per_epoch"] * len(fresh["epochs"])
    t_fresh = statistics.median(steps_s(res["online_fresh"][s]) for s in seeds) / n_fresh
    k = int(t_off / t_fresh)
    plan = os.path.join(workdir, "online_wall_plan.json")
    rec = _read(plan) or {"k": k, "t_offline_s": t_off, "t_fresh_step_s": t_fresh}
    with open(plan, "w") as f:
        json.dump(rec, f, indent=1)
    spe = max(1, round(rec["k"] / 4))
    for seed in seeds:
        res["online_wall"][seed] = train(workdir, "online_wall", seed, log,
                                         extra + [f"--config.steps_per_epoch={spe}"])
    print(report(workdir, res, stores, rec["k"], seeds))


if __name__ == "__main__":
    main()
