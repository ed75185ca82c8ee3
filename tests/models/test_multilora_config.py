"""MultiLoRAConfig: defaults, derived values, round trip, and rejected combinations."""

import math

import pytest

from multilora_pipeline.models.multilora import (
    FORMAT_VERSION,
    MultiLoRAConfig,
    MultiLoRAConfigError,
)


def test_defaults_and_derived_values():
    config = MultiLoRAConfig()
    assert (config.n_modules, config.rank, config.scale_shape, config.init) == (
        4,
        8,
        "scalar",
        "multilora",
    )
    assert config.lora_alpha == 8.0  # None -> rank
    assert config.scaling == 1.0
    assert config.total_rank == 32
    assert config.learnable_scales


def test_scaling_lora_and_rslora():
    assert MultiLoRAConfig(rank=8, alpha=16).scaling == 2.0
    assert MultiLoRAConfig(rank=16, alpha=16, use_rslora=True).scaling == pytest.approx(
        16 / math.sqrt(16)
    )


def test_round_trip_through_dict():
    config = MultiLoRAConfig(
        n_modules=2, rank=4, alpha=8, dropout=0.1, target_modules="^.*q_proj$", scale_shape="vector"
    )
    data = config.to_dict()
    assert data["format_version"] == FORMAT_VERSION
    assert MultiLoRAConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_modules": 0}, "n_modules must be an integer >= 1"),
        ({"rank": 2.5}, "rank must be an integer >= 1"),
        ({"rank": True}, "rank must be an integer >= 1"),
        ({"alpha": float("nan")}, "alpha must be a finite number"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"scale_shape": "matrix"}, "scale_shape must be one of"),
        ({"init": "pissa"}, "init must be one of"),
        ({"init": "lora", "n_modules": 4, "rank": 8}, "needs n_modules=1.*rank=4\\*8=32"),
        ({"init": "lora", "n_modules": 1, "scale_shape": "vector"}, "has no learnable scale"),
        ({"target_modules": "q_proj"}, "regex starting with '\\^'.*\\['q_proj'\\]"),
        ({"target_modules": "^(unclosed"}, "does not compile"),
        ({"target_modules": []}, "non-empty list"),
        ({"target_modules": ["q_proj", ""]}, "non-empty strings"),
    ],
)
def test_invalid_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(MultiLoRAConfigError, match=message):
        MultiLoRAConfig(**kwargs)


def test_all_problems_reported_at_once():
    with pytest.raises(MultiLoRAConfigError) as info:
        MultiLoRAConfig(n_modules=0, dropout=2.0)
    assert "n_modules" in str(info.value) and "dropout" in str(info.value)


def test_from_dict_rejects_newer_version_and_unknown_keys():
    data = MultiLoRAConfig().to_dict()
    with pytest.raises(MultiLoRAConfigError, match="newer than this code"):
        MultiLoRAConfig.from_dict({**data, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(MultiLoRAConfigError, match="unknown keys \\['lr'\\]"):
        MultiLoRAConfig.from_dict({**data, "lr": 1e-4})
    with pytest.raises(MultiLoRAConfigError, match="no 'format_version'"):
        MultiLoRAConfig.from_dict({"rank": 8})
