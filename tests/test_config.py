"""Configs: strict keys, inheritance, round trip through JSON."""
import json

import pytest

import unimm
from unimm.config import ConfigError, to_dict
from unimm.models import UnifiedConfig
from unimm.pipelines import resolve_config


def test_named_configs_are_listed():
    assert {"tiny", "tiny-linear", "tiny-pixel-shuffle", "tiny-qformer", "tiny-perceiver"} <= set(unimm.available_configs())


def test_base_inheritance_overrides_only_what_it_names():
    base, child = resolve_config("tiny"), resolve_config("tiny-qformer")
    assert child.projector["type"] == "qformer" and child.projector["num_queries"] == 8
    assert child.backbone == base.backbone and child.image_tokenizer == base.image_tokenizer


def test_config_round_trips_through_json():
    cfg = resolve_config("tiny-perceiver")
    again = UnifiedConfig.from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_config_files_by_path_and_bad_files(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("base: tiny\nname: mine\n")
    assert resolve_config(str(p)).name == "mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        resolve_config(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        resolve_config(str(loop))


def test_bad_values_name_the_section():
    with pytest.raises(ConfigError, match="bad value in model config.encoder"):
        UnifiedConfig.from_dict({"encoder": {"resize_mode": "stretch"}})
    with pytest.raises(ConfigError, match="paradigm 'diffusion' is not available"):
        UnifiedConfig.from_dict({"generation": {"paradigm": "diffusion"}})
