"""One override parser (genexflow.overrides) and the typed TrainConfig (pydantic): values coerce, bad keys and
values are named."""

from __future__ import annotations

import json

import pytest

from genexflow.errors import InputError
from genexflow.overrides import load_config_file, nest_dotted, parse_override, parse_overrides
from genexflow.training.config import TrainConfig
from genexflow.training.config import parse_overrides as parse_sets
from genexflow.training.hpo import apply_params
from genexflow.training.inputs import build_config


def test_values_are_json_when_they_parse_and_dotted_keys_nest():
    got = parse_overrides(["lr=1e-3", "model.d_model=32", "model.readout_dims=[64, 32]", "label=status",
                           "combat=false", "init_from=null", "model.d_model=48"])
    assert got == {"lr": 1e-3, "model": {"d_model": 48, "readout_dims": [64, 32]}, "label": "status",
                   "combat": False, "init_from": None}


@pytest.mark.parametrize("bad", ["lr", "=3", "model..d_model=1", " =1", "model.=2"])
def test_malformed_items_are_named(bad):
    with pytest.raises(InputError) as err:
        parse_override(bad)
    assert repr(bad) in str(err.value) and "KEY=VALUE" in str(err.value)


def test_dotted_keys_only_under_the_dict_fields_of_the_training_config():
    with pytest.raises(InputError, match=r"unknown option 'optimizer\.beta'"):
        parse_sets(["optimizer.beta=0.9"])
    with pytest.raises(InputError, match=r"unknown option 'optimizer\.beta'"):
        apply_params(TrainConfig(), {"optimizer.beta": 0.9})
    with pytest.raises(InputError, match=r"'model\.x' conflicts with model=3"):
        nest_dotted({"model": 3, "model.x": 1})


def test_train_config_coerces_types_and_names_the_bad_field():
    cfg = TrainConfig.from_dict({"epochs": 15.0, "lr": "3e-4", "combat": "false", "covariates": ["age"]})
    assert (cfg.epochs, cfg.lr, cfg.combat) == (15, 3e-4, False) and isinstance(cfg.epochs, int)
    with pytest.raises(InputError, match=r"epochs: .*integer"):
        TrainConfig.from_dict({"epochs": "many"})
    with pytest.raises(InputError, match=r"epochs: .*fractional"):
        TrainConfig.from_dict({"epochs": 1.5})
    with pytest.raises(InputError, match=r"unknown training option\(s\): bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="lr must be > 0"):  # the range checks of validate()
        TrainConfig.from_dict({"lr": -1})


def test_public_api_round_trips():
    cfg = TrainConfig.from_dict({"epochs": 3, "model": {"d_model": 32}, "covariates": ["age"]})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.with_(model={"n_heads": 2}).model == {"d_model": 32, "n_heads": 2}
    assert cfg.flat_params()["model.d_model"] == 32 and cfg.flat_params()["covariates"] == "age"
    assert cfg.validate() is cfg


def test_file_then_fields_then_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 40\nlr: 0.01\nmodel:\n  d_model: 16\n  n_heads: 2\nmodel.latent_dim: 8\n")
    assert load_config_file(path)["model"] == {"d_model": 16, "n_heads": 2, "latent_dim": 8}
    cfg = build_config(path, parse_sets(["model.d_model=32", "lr=1e-3"]), epochs=5, label="status")
    assert (cfg.epochs, cfg.lr, cfg.label) == (5, 1e-3, "status")
    assert cfg.model == {"d_model": 32, "n_heads": 2, "latent_dim": 8}
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match="expected a mapping"):
        load_config_file(tmp_path / "bad.json")
