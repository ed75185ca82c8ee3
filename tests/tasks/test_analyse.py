"""ΔW analysis: a constructed spectrum is recovered exactly; plots and summary are written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.models.multilora import LowRankDelta, MultiLoRAConfig, MultiLoRALinear
from multilora_pipeline.tasks.analysis.spectra import (
    aggregate_analysis,
    analyse_deltas,
    low_rank_singular_values,
    parse_module_path,
    plot_effective_rank,
    plot_spectra,
    summarise_flatness,
)


def _with_spectrum(
    sigma: list[float], rows: int = 32, cols: int = 24, seed: int = 0
) -> torch.Tensor:
    """U diag(σ) Vᵀ with random orthonormal U, V: a matrix whose singular values are σ."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(sigma), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(sigma), generator=g, dtype=torch.float64))
    return (u @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T).float()


def _arm(sigma: list[float], layers: int = 2, seed: int = 0):
    deltas = {}
    for depth in range(layers):
        for kind in ("q_proj", "v_proj"):
            deltas[f"model.layers.{depth}.self_attn.{kind}"] = _with_spectrum(
                sigma, seed=seed + depth
            )
    return analyse_deltas(deltas)


def test_recovers_a_constructed_spectrum_and_its_ranks():
    frame = analyse_deltas({"model.layers.3.self_attn.q_proj": _with_spectrum([4, 2, 1, 1])})
    row = frame.iloc[0]
    assert (row.module, row.layer_type, row.depth, row.rows, row.cols) == (
        "model.layers.3.self_attn.q_proj",
        "q_proj",
        3,
        32,
        24,
    )
    assert row.singular_values.dtype == np.float32 and len(row.singular_values) == 24
    assert row.singular_values[:4] == pytest.approx([4, 2, 1, 1], abs=1e-5)
    assert row.singular_values[4:] == pytest.approx(np.zeros(20), abs=1e-5)
    assert row.spectrum_normalised[:4] == pytest.approx([1, 0.5, 0.25, 0.25], abs=1e-5)
    # p = σ/Σσ = (1/2, 1/4, 1/8, 1/8): H = 1.75 ln 2, so exp(H) = 2^1.75.
    assert row.effective_rank == pytest.approx(2**1.75, rel=1e-4)
    assert row.stable_rank == pytest.approx(22 / 16, rel=1e-5)  # (16+4+1+1) / 16
    assert row.top1_energy == pytest.approx(16 / 22, rel=1e-5)
    assert row.top4_energy == pytest.approx(1.0, rel=1e-5)
    assert row.frobenius_norm == pytest.approx(math.sqrt(22), rel=1e-5)


def test_flat_spectrum_has_full_effective_rank():
    row = analyse_deltas({"blocks.0.fc": _with_spectrum([1.0] * 8)}).iloc[0]
    assert row.effective_rank == pytest.approx(8.0, rel=1e-4)
    assert row.stable_rank == pytest.approx(8.0, rel=1e-4)
    assert row.top4_energy == pytest.approx(0.5, rel=1e-4)


def test_zero_update_gives_zeros_not_nan():
    row = analyse_deltas({"model.layers.0.mlp.up_proj": torch.zeros(16, 8)}).iloc[0]
    values = [row.effective_rank, row.stable_rank, row.top1_energy, row.sigma_max]
    assert values == [0.0, 0.0, 0.0, 0.0]
    assert not np.isnan(row.spectrum_normalised).any()


def test_non_finite_update_is_a_training_error():
    bad = torch.ones(4, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="layers.1.q_proj"):
        analyse_deltas({"model.layers.1.q_proj": bad})


def test_module_paths_give_layer_type_and_depth():
    assert parse_module_path("base_model.model.model.layers.11.mlp.down_proj") == ("down_proj", 11)
    assert parse_module_path("transformer.h.0.attn.c_attn") == ("c_attn", 0)
    assert parse_module_path("lm_head") == ("lm_head", -1)


def test_aggregates_by_layer_type_and_depth():
    frame = _arm([3, 1])
    by_type = aggregate_analysis(frame, "layer_type")
    assert list(by_type["layer_type"]) == ["q_proj", "v_proj"]
    assert list(by_type["matrices"]) == [2, 2]
    assert by_type["stable_rank"].tolist() == pytest.approx([10 / 9, 10 / 9], rel=1e-4)
    by_depth = aggregate_analysis(frame, "depth")
    assert list(by_depth["depth"]) == [0, 1]
    with pytest.raises(ValueError):
        aggregate_analysis(frame, "module")


def test_plots_and_summary_name_the_flatter_arm(tmp_path):
    arms = {
        "lora": _arm([8, 1, 0.5, 0.1]),
        "multilora": _arm([2, 2, 1.5, 1], seed=7),
        "untrained": analyse_deltas({"model.layers.0.q_proj": torch.zeros(8, 8)}),
    }
    for name, fn in (("spectra.png", plot_spectra), ("erank.png", plot_effective_rank)):
        out = fn(arms, tmp_path / "plots" / name)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["erank.png", "spectra.png"]

    text = summarise_flatness(arms)
    assert text.startswith("**multilora** has the flatter spectrum")
    assert "vs" in text and "**lora**" in text
    assert "| untrained | 1 |" in text  # the zero arm is listed, with finite numbers
    assert "nan" not in text.lower()
    assert summarise_flatness({}) == "No adapted matrices to analyse."


def _adapter_layer(out_features, in_features, seed=0, **config):
    """A MultiLoRA layer whose A, B and (learnable) scales are all random and non-zero."""
    torch.manual_seed(seed)
    layer = MultiLoRALinear(nn.Linear(in_features, out_features), MultiLoRAConfig(**config))
    with torch.no_grad():
        for tensor in (layer.lora_A, layer.lora_B, layer.lora_scale):
            if tensor.requires_grad:
                tensor.copy_(torch.randn(tensor.shape))
    return layer


# (out, in, config): n·r = 12 or 16 against out and in on both sides of it.
ADAPTERS = {
    "multilora_scalar": (40, 24, dict(n_modules=3, rank=4, alpha=8)),
    "multilora_vector": (40, 24, dict(n_modules=3, rank=4, alpha=8, scale_shape="vector")),
    "multilora_rslora": (40, 24, dict(n_modules=4, rank=4, alpha=8, use_rslora=True)),
    "lora": (40, 24, dict(n_modules=1, rank=12, alpha=24, init="lora")),
    "out_below_nr": (6, 24, dict(n_modules=4, rank=4, scale_shape="vector")),
    "in_below_nr": (40, 5, dict(n_modules=4, rank=4)),
    "both_below_nr": (9, 7, dict(n_modules=1, rank=16, init="lora")),
}


@pytest.mark.parametrize("name", ADAPTERS)
def test_factored_singular_values_equal_the_dense_svd(name):
    out_features, in_features, config = ADAPTERS[name]
    layer = _adapter_layer(out_features, in_features, **config)
    with torch.no_grad():
        b, a = layer.delta_factors()
        dense = torch.linalg.svdvals(layer.delta_weight())
        factored = low_rank_singular_values(b, a)
    assert torch.count_nonzero(b) == b.numel()  # the scales really are folded in
    assert factored.shape == (min(out_features, in_features),)
    torch.testing.assert_close(factored, dense, rtol=1e-4, atol=1e-5 * float(dense[0]))
    rank = min(out_features, in_features, layer.n_modules * layer.rank)
    assert torch.count_nonzero(factored) == rank  # exact zeros past the rank


def test_factored_zero_update_gives_zeros_not_nan():
    layer = _adapter_layer(16, 8, n_modules=1, rank=4, init="lora")
    with torch.no_grad():
        layer.lora_B.zero_()
        factors = layer.delta_factors()
    assert torch.equal(low_rank_singular_values(*factors), torch.zeros(8))
    row = analyse_deltas({"model.layers.0.mlp.up_proj": factors}).iloc[0]
    assert (row.rows, row.cols, len(row.singular_values)) == (16, 8, 8)
    values = [row.effective_rank, row.stable_rank, row.top1_energy, row.sigma_max]
    assert values == [0.0, 0.0, 0.0, 0.0]
    assert not np.isnan(row.spectrum_normalised).any()


def test_dense_and_factored_deltas_give_the_same_table():
    dense, factored = {}, {}
    for depth, name in enumerate(ADAPTERS):
        out_features, in_features, config = ADAPTERS[name]
        layer = _adapter_layer(out_features, in_features, seed=depth, **config)
        path = f"model.layers.{depth}.self_attn.{name}"
        with torch.no_grad():
            dense[path] = layer.delta_weight()
            factored[path] = LowRankDelta(*layer.delta_factors())
    want, got = analyse_deltas(dense), analyse_deltas(factored)
    assert list(got.columns) == list(want.columns)
    exact = ["module", "layer_type", "depth", "rows", "cols"]
    assert got[exact].equals(want[exact])
    for column in want.columns.difference(exact):
        for w, g in zip(want[column], got[column], strict=True):
            assert np.shape(g) == np.shape(w), column
            assert g == pytest.approx(w, rel=1e-4, abs=1e-5 * (float(np.max(w)) or 1.0)), column
    assert all(s.dtype == np.float32 for s in got["singular_values"])


def test_non_finite_or_mismatched_factors_are_errors():
    b, a = torch.ones(6, 2), torch.ones(2, 4)
    bad = a.clone()
    bad[1, 3] = float("inf")
    with pytest.raises(TrainingError, match="layers.2.v_proj"):
        analyse_deltas({"model.layers.2.v_proj": LowRankDelta(b, bad)})
    with pytest.raises(ValueError, match=r"\(6, 2\) and \(3, 4\)"):
        low_rank_singular_values(b, torch.ones(3, 4))


def test_the_summary_says_whether_arms_differ_by_more_than_their_seeds(tmp_path):
    import pandas as pd

    def seeds(*spectra):
        return pd.concat(
            [_arm(s, seed=i).assign(seed=i) for i, s in enumerate(spectra)], ignore_index=True
        )

    flat = seeds([2, 2, 1.5, 1], [2, 1.9, 1.6, 1], [2.1, 2, 1.5, 0.9])
    peaked = seeds([8, 1, 0.5, 0.1], [8, 1.1, 0.4, 0.1], [7.9, 1, 0.5, 0.2])
    text = summarise_flatness({"multilora": flat, "lora": peaked})
    assert "(3 seeds)" in text and " ± " in text
    assert "**multilora** and **lora** differ by more than the seeds do" in text
    # Top-1 energy too: the peaked arm holds more of its energy in one direction.
    top1 = next(line for line in text.splitlines() if line.startswith("Mean top-1 energy"))
    assert "**lora** and **multilora** differ by more than the seeds do" in top1
    table_row = next(line for line in text.splitlines() if line.startswith("| multilora |"))
    assert table_row.count(" ± ") == len(table_row.split("|")) - 4  # every metric: mean ± sd
    noisy = seeds([2, 2, 1.5, 1], [8, 1, 0.5, 0.1])
    mixed = seeds([8, 1, 0.5, 0.1], [2, 2, 1.5, 1])
    text = summarise_flatness({"a": noisy, "b": mixed})
    assert "differ by no more than the seeds do" in text
    plot_spectra({"multilora": flat, "lora": peaked}, tmp_path / "spectra.png")  # seeds averaged
