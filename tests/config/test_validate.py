"""Value ranges checked when a config is loaded: one line naming the field, its value and the
allowed range, before any data is read or program compiled.

The bad value of each field is written here (not derived from augdiff's table); the table
is only read to check that every validated field has a case here.
"""

from __future__ import annotations

import pytest

from augdiff import cli
from augdiff.config import RANGES, ConfigError, load_config, shipped_configs, validate

CLS = "configs/classify_cifar10.py:smoke"
EDM = "configs/casd_cifar10.py:smoke"
MIX = "configs/diffusemix_cifar100.py:smoke"
AUG = "configs/augcond_cifar10.py:fewshot_smoke"
INV = "configs/diffinv_cifar10.py:smoke"
SD = "configs/sd_generate.py:smoke"
EVA = "configs/evaluate_cifar10.py:smoke"
RUN = "configs/quickstart.py:online"

# field: (a config that has it, a value out of its range)
BAD = {
    "data.image_size": (CLS, "0"),
    "data.channels": (CLS, "2"),
    "data.per_class": (CLS, "-1"),
    "data.first_per_class": (EDM, "-3"),
    "data.imbalance_factor": (CLS, "0.5"),
    "data.num_workers": (CLS, "-1"),
    "mesh.data": (CLS, "0"),
    "mesh.fsdp": (CLS, "0"),
    "batch_size": (CLS, "0"),
    "eval_batch_size": (CLS, "-8"),
    "epochs": (CLS, "0"),
    "steps_per_epoch": (CLS, "-5"),
    "eval_every_epochs": (CLS, "-1"),
    "checkpoint_every_steps": (CLS, "-1"),
    "keep_checkpoints": (CLS, "0"),
    "log_every_steps": (CLS, "0"),
    "optim.lr": (CLS, "-0.1"),
    "optim.momentum": (CLS, "1.0"),
    "optim.weight_decay": (CLS, "-1e-4"),
    "optim.warmup_epochs": (CLS, "-1.0"),
    "optim.gamma": (CLS, "0.0"),
    "augment.crop_pad": (CLS, "-4"),
    "augment.cutout": (CLS, "-1"),
    "augment.mixup_alpha": (CLS, "-0.2"),
    "augment.cutmix_alpha": (CLS, "-1.0"),
    "synthetic.label_weight": (CLS, "-0.5"),
    "synthetic.online.share": (CLS, "1.5"),
    "synthetic.online.buffer_size": (CLS, "-1"),
    "synthetic.online.refresh_every": (CLS, "-2"),
    "synthetic.online.spill_every": (CLS, "-1"),
    "synthetic.online.hybrid.lam": (CLS, "-0.2"),
    "num_samples": (EDM, "-16"),
    "train.batch_size": (EDM, "0"),
    "train.total_images": (EDM, "-16"),
    "train.lr": (EDM, "0.0"),
    "train.beta1": (EDM, "1.0"),
    "train.beta2": (EDM, "-0.1"),
    "train.eps": (EDM, "0.0"),
    "train.lr_rampup_images": (EDM, "-1"),
    "train.ema_halflife_images": (EDM, "-500"),
    "train.grad_clip": (EDM, "-1.0"),
    "train.checkpoint_every_steps": (EDM, "0"),
    "train.keep_checkpoints": (EDM, "-1"),
    "train.log_every_steps": (EDM, "0"),
    "augment.p": (EDM, "1.2"),
    "model.dropout": (EDM, "1.0"),
    "model.model_channels": (EDM, "-16"),
    "model.num_blocks": (EDM, "-1"),
    "model.num_classes": (EDM, "-10"),
    "model.num_sources": (EDM, "0"),
    "edm.sigma_data": (EDM, "0.0"),
    "edm.P_std": (EDM, "-1.2"),
    "edm.sigma_min": (EDM, "0.0"),
    "edm.sigma_max": (EDM, "-80.0"),
    "edm.rho": (EDM, "0.0"),
    "synthetic.fraction": (EDM, "1.5"),
    "synthetic.shift_count": (EDM, "-128"),
    "sample.num_steps": (EDM, "0"),
    "sample.batch_size": (EDM, "0"),
    "sample.shard_size": (EDM, "0"),
    "sample.guidance": (EDM, "-1.0"),
    "sample.S_churn": (EDM, "-1.0"),
    "sample.S_min": (EDM, "-0.5"),
    "sample.S_max": (EDM, "-1.0"),
    "sample.S_noise": (EDM, "-1.0"),
    "sample.grid": (EDM, "-16"),
    "diffusemix.steps": (MIX, "0"),
    "diffusemix.batch_size": (MIX, "0"),
    "diffusemix.hybrid_batch_size": (MIX, "-16"),
    "diffusemix.shard_size": (MIX, "0"),
    "diffusemix.resolution": (MIX, "0"),
    "diffusemix.image_guidance": (MIX, "-1.5"),
    "diffusemix.text_guidance": (MIX, "-4.0"),
    "diffusemix.max_images": (MIX, "-1"),
    "diffusemix.fractal_bank_size": (MIX, "-16"),
    "diffusemix.hybrid.lam": (MIX, "1.2"),
    "diffusemix.hybrid.lam_min": (MIX, "1.5"),
    "diffusemix.hybrid.lam_max": (MIX, "1.01"),
    "diffusemix.hybrid.ramp": (MIX, "-2.0"),
    "diffusemix.shb.percentile": (MIX, "101.0"),
    "diffusemix.shb.kernel_size": (MIX, "0"),
    "augcond.steps": (AUG, "0"),
    "augcond.batch_size": (AUG, "0"),
    "augcond.guidance": (AUG, "-10.0"),
    "augcond.dropout_p": (AUG, "1.4"),
    "augcond.num_per_class": (AUG, "-2"),
    "augcond.noise_level": (AUG, "-1"),
    "augcond.resolution": (AUG, "0"),
    "inversion.steps": (INV, "0"),
    "inversion.batch_size": (INV, "0"),
    "inversion.learning_rate": (INV, "0.0"),
    "inversion.weight_decay": (INV, "-0.01"),
    "inversion.num_tokens": (INV, "0"),
    "inversion.resolution": (INV, "-16"),
    "inversion.max_images": (INV, "-1"),
    "sampling.steps": (INV, "0"),
    "sampling.batch_size": (INV, "0"),
    "sampling.interpolation_strength": (INV, "1.1"),
    "sampling.noise_scale": (INV, "-0.1"),
    "sampling.num_partners": (INV, "-1"),
    "sd.steps": (SD, "0"),
    "sd.batch_size": (SD, "0"),
    "sd.guidance": (SD, "-7.5"),
    "sd.strength": (SD, "0.0"),
    "sd.eta": (SD, "2.0"),
    "sd.resolution": (SD, "0"),
    "sd.num_per_class": (SD, "-2"),
    "sd.max_images": (SD, "-4"),
    "evaluate.max_real": (EVA, "-500"),
    "evaluate.max_synthetic": (EVA, "-1"),
    "evaluate.max_train": (EVA, "-1"),
    "evaluate.kid_subsets": (EVA, "0"),
    "evaluate.kid_subset_size": (EVA, "0"),
    "evaluate.prdc_k": (EVA, "0"),
    "evaluate.ssim_threshold": (EVA, "1.5"),
    "extractor.batch_size": (EVA, "0"),
    "extractor.image_size": (EVA, "-32"),
    "generator.num_samples": (RUN, "-500"),
    "report.samples_per_class": (RUN, "-8"),
    "mixed.online.share": (RUN, "-0.5"),
}


# Fields whose partner check would also fire: the message must give the field's own range.
OWN_RANGE = {"diffusemix.hybrid.lam_min": "[0, 1]", "diffusemix.hybrid.lam_max": "[0, 1]",
             "edm.sigma_min": "> 0", "edm.sigma_max": "> 0"}


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


def test_every_validated_field_has_a_bad_value_here():
    assert set(BAD) == set(RANGES)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_value_is_one_line_naming_field_value_and_range(field, capsys):
    spec, bad = BAD[field]
    load_config(spec, [f"{field}={bad}"])  # the override itself is accepted by ml_collections
    rc = cli.main(["augdiff", "config", "show", spec, f"--config.{field}={bad}"])
    line = _one_line(capsys)
    assert rc == 2
    assert line.startswith(f"augdiff config: config error: {field}=") and "must be" in line
    assert str(float(bad)).rstrip("0").rstrip(".") in line or bad in line
    assert OWN_RANGE.get(field, "must be") in line


@pytest.mark.parametrize("spec", shipped_configs())
def test_every_shipped_config_is_in_range(spec):
    validate(load_config(spec))


@pytest.mark.parametrize("args,field", [
    (["train", "--config", CLS, "--config.steps_per_epoch=-5"], "steps_per_epoch=-5"),
    (["train-diffusion", "--config", EDM, "--config.train.total_images=-16"],
     "train.total_images=-16"),
    (["generate", "--config", MIX, "--config.diffusemix.hybrid.lam_min=1.5"],
     "diffusemix.hybrid.lam_min=1.5"),
    (["sample", "--config", EDM, "--config.sample.num_steps=0"], "sample.num_steps=0"),
    (["evaluate", "--config", EVA, "--config.evaluate.ssim_threshold=2.0"],
     "evaluate.ssim_threshold=2.0"),
    (["run", "--config", RUN, "--config.classifier.overrides.epochs=-1"], "epochs=-1"),
    (["run", "--config", RUN, "--config.generator.overrides.sample.num_steps=0"],
     "sample.num_steps=0"),
])
def test_commands_stop_before_running(args, field, capsys, monkeypatch):
    """The CLI checks before it imports the command or starts the runtime."""
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: pytest.fail(f"imported {name} for a bad config"))
    rc = cli.main(["augdiff", *args])
    line = _one_line(capsys)
    assert rc == 2 and field in line and "must be" in line
    if args[0] == "run":
        assert "overrides" in line


@pytest.mark.parametrize("overrides,named", [
    (["edm.sigma_min=90.0"], "edm.sigma_min=90.0"),
    (["diffusemix.hybrid.lam_min=0.5", "diffusemix.hybrid.lam_max=0.25"],
     "diffusemix.hybrid.lam_min=0.5"),
    (["diffusemix.hybrid.lam_min=0.5", "diffusemix.hybrid.lam_max=-1.0"],
     "diffusemix.hybrid.lam_max=-1.0"),
])
def test_bounds_that_bound_each_other(overrides, named):
    spec = EDM if overrides[0].startswith("edm") else MIX
    with pytest.raises(ConfigError) as e:
        validate(load_config(spec, overrides))
    assert named in str(e.value) and "\n" not in str(e.value)


def test_in_range_edges_pass():
    validate(load_config(MIX, ["diffusemix.hybrid.lam_min=0.0", "diffusemix.hybrid.lam_max=1.0"]))
    validate(load_config(MIX, ["diffusemix.hybrid.lam_min=-1.0", "diffusemix.hybrid.lam_max=-1.0"]))
    validate(load_config(CLS, ["steps_per_epoch=0", "synthetic.online.share=1.0"]))


def test_edm_image_size_the_network_cannot_take(tmp_path, capsys):
    """15 px cannot be halved by the tiny SongUNet (channel_mult (1, 2)): one line naming
    data.image_size, before data is opened (data.path points nowhere)."""
    rc = cli.main(["augdiff", "train-diffusion", "--config", EDM, "--config.data.image_size=15",
                   f"--config.workdir={tmp_path / 'w'}",
                   f"--config.data.path={tmp_path / 'no_such.zip'}"])
    line = _one_line(capsys)
    assert rc == 1 and "data.image_size=15" in line and "multiple of 2" in line
