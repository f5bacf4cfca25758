"""The recipe and the runtime configs (core/config.py): defaults, presets, old spellings, bad values."""

from __future__ import annotations

import dataclasses

import pytest

from digitrec.core.config import PRESETS, RuntimeConfig, TrainConfig, config_from_dict, make_config


def test_the_defaults_are_the_reference_recipe():
    cfg = TrainConfig()
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.rho, cfg.eps, cfg.batch_size, cfg.epochs) == \
        ("reference", "rmsprop", 1e-3, 0.9, 1e-8, 86, 30)
    assert (cfg.schedule, cfg.plateau_patience, cfg.plateau_factor, cfg.min_lr) == ("plateau", 3, 0.5, 1e-5)
    assert make_config("seed") == cfg.__class__(preset="seed")


def test_every_recipe_choice_is_a_field():
    """What used to be fixed in code is in the recipe, with the values it had there."""
    fast = make_config("fast")
    assert fast.nesterov and fast.cycle_momentum and fast.onecycle_warmup == 0.25
    assert fast.shuffle_seed_offset == 1


def test_old_spellings_still_read():
    assert make_config("seed", model="seed").model == "reference"
    old = {k: v for k, v in make_config("fast").to_dict().items()
           if k not in ("nesterov", "onecycle_warmup", "cycle_momentum", "shuffle_seed_offset")}
    assert config_from_dict({**old, "threads": 2}) == make_config("fast")  # a config.json of an older release
    assert config_from_dict({**TrainConfig().to_dict(), "model": "seed"}).model == "reference"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(preset):
    cfg = make_config(preset)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.preset == preset


@pytest.mark.parametrize("overrides, message", [
    ({"model": "resnet"}, "model must be one of"),
    ({"deskew": True}, "deskew and alternate_deskew need model 'fast' or 'best'"),
    ({"onecycle_warmup": 1.0}, r"onecycle_warmup must be in \(0, 1\)"),
    ({"val_fraction": 0.0}, "schedule 'plateau' watches validation accuracy"),
    ({"epochs": 0}, "epochs must be at least 1"),
])
def test_invalid_recipes_raise_at_once(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("seed", **overrides)


def test_unknown_fields_are_errors():
    with pytest.raises(ValueError, match="unknown config field"):
        make_config("fast", widht=8)
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("fastest")


def test_the_runtime_is_apart_from_the_recipe():
    recipe = {f.name for f in dataclasses.fields(TrainConfig)}
    runtime = {f.name for f in dataclasses.fields(RuntimeConfig)}
    assert not recipe & runtime
    with pytest.raises(ValueError, match="device must be one of"):
        RuntimeConfig(device="tpu")
