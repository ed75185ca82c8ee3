"""The paper's claim, measured: how many singular directions each weight update uses.

For every adapted matrix ΔW (merged adapter, or W_ft - W0 for full fine-tuning)
this computes the singular values σ₁ ≥ σ₂ ≥ … in fp32 and from them:

- normalised spectrum   σᵢ / σ₁ (1 at the top; a flatter update stays high longer)
- top-k energy share     Σᵢ≤k σᵢ² / Σ σᵢ² (near 1: the update lives in k directions)
- effective rank         exp(H(p)), pᵢ = σᵢ / Σ σ (Roy & Vetterli, 2007)
- stable rank            ‖ΔW‖_F² / σ₁² = Σ σᵢ² / σ₁²

MultiLoRA's claim ("more democratic unitary transforms") is a flatter spectrum
than LoRA of the same total rank: a higher effective rank and a lower top-k
energy share. A zero ΔW (an untrained adapter) gets zeros everywhere, never NaN.

An adapter's ΔW = B·A (B: out × k, A: k × in, k = n·r) is passed factored
(``LowRankDelta``) and never formed: with thin QRs B = Q_b R_b and Aᵀ = Q_a R_a,
ΔW = Q_b (R_b R_aᵀ) Q_aᵀ, so σ(ΔW) = σ(R_b R_aᵀ), a k × k SVD instead of out × in.
Both paths give min(out, in) values (the factored one padded with exact zeros).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from multilora_pipeline.data_specs.errors import TrainingError  # noqa: E402
from multilora_pipeline.models.content import atomic_file  # noqa: E402
from multilora_pipeline.models.multilora.layer import LowRankDelta  # noqa: E402

# Metrics averaged by the aggregates and the summary.
_SUMMARY_COLUMNS = ("effective_rank", "stable_rank")
_DEPTH = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def parse_module_path(path: str) -> tuple[str, int]:
    """(layer type, depth) of a module path: `model.layers.3.self_attn.q_proj` -> ("q_proj", 3).

    Depth is the first integer component of the path (-1 when there is none).
    """
    match = _DEPTH.search(path)
    return path.rsplit(".", 1)[-1], int(match.group(1)) if match else -1


def spectrum_metrics(singular_values: np.ndarray, top_k: Sequence[int] = (1, 4, 8)) -> dict:
    """Normalised spectrum, top-k energy shares, effective and stable rank of σ (descending)."""
    s = np.asarray(singular_values, dtype=np.float64)
    total, energy = s.sum(), float((s**2).sum())
    sigma_max = float(s[0]) if s.size else 0.0
    out: dict = {
        "sigma_max": sigma_max,
        "frobenius_norm": math.sqrt(energy),
        "spectrum_normalised": (s / sigma_max) if sigma_max > 0 else np.zeros_like(s),
    }
    for k in top_k:
        out[f"top{k}_energy"] = float((s[:k] ** 2).sum() / energy) if energy > 0 else 0.0
    if total > 0:
        p = s[s > 0] / total
        out["effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
        out["stable_rank"] = energy / sigma_max**2
    else:
        out["effective_rank"] = 0.0
        out["stable_rank"] = 0.0
    return out


def low_rank_singular_values(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Singular values of b @ a (descending, min(out, in) of them) without forming it.

    b: (out × k), a: (k × in). Costs two thin QRs and a k × k SVD, O((out + in)·k²),
    where the dense SVD costs O(out·in·min(out, in)). Past the rank the values are exact
    zeros (the dense SVD gives round-off there).
    """
    if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(
            f"a low-rank ΔW needs b (out × k) and a (k × in), got {tuple(b.shape)} and "
            f"{tuple(a.shape)}"
        )
    r_b = torch.linalg.qr(b, mode="r").R  # (min(out, k) × k)
    r_a = torch.linalg.qr(a.t(), mode="r").R  # (min(in, k) × k)
    sigma = torch.linalg.svdvals(r_b @ r_a.t())
    full = min(b.shape[0], a.shape[1])
    return torch.cat([sigma, sigma.new_zeros(full - sigma.numel())])


def _singular_values(module: str, delta) -> tuple[int, int, np.ndarray]:
    """(rows, cols, fp32 σ) of a dense ΔW or a ``LowRankDelta``, on the tensors' device."""
    if isinstance(delta, tuple):
        b, a = (f.detach().float() for f in delta)
        _check_finite(module, b, a)
        sigma = low_rank_singular_values(b, a)
        _check_finite(module, sigma)  # finite factors whose product overflows fp32
        rows, cols = b.shape[0], a.shape[1]
    else:
        matrix = delta.detach().float()
        if matrix.ndim != 2:
            matrix = matrix.reshape(matrix.shape[0], -1)  # conv-style weights: out x (in * k)
        _check_finite(module, matrix)
        sigma = torch.linalg.svdvals(matrix)
        rows, cols = matrix.shape
    return int(rows), int(cols), sigma.cpu().numpy().astype(np.float32)


def _check_finite(module: str, *tensors: torch.Tensor) -> None:
    if not all(torch.isfinite(t).all() for t in tensors):
        raise TrainingError(
            "the weight update has NaN or infinite values",
            where=f"ΔW of {module}",
            fix="training diverged: lower the learning rate or enable gradient clipping",
        )


def analyse_deltas(
    deltas: Mapping[str, torch.Tensor | LowRankDelta],
    top_k: Sequence[int] = (1, 4, 8),
    progress: bool = False,
) -> pd.DataFrame:
    """One row per adapted matrix: module, layer_type, depth, shape, singular values (fp32),
    normalised spectrum, top-k energy shares, effective rank, stable rank.

    A value is a dense ΔW (out × in) or a ``LowRankDelta`` (b, a) with ΔW = b @ a; both give
    the same row (rows × cols = out × in, min(out, in) singular values), the factored one
    without ever forming ΔW. The SVD runs on the tensor's own device (a GPU makes large
    dense updates quick).
    """
    rows = []
    for module, delta in tqdm(deltas.items(), desc="svd", disable=not progress, mininterval=2):
        n_rows, n_cols, sigma = _singular_values(module, delta)
        layer_type, depth = parse_module_path(module)
        rows.append(
            {
                "module": module,
                "layer_type": layer_type,
                "depth": depth,
                "rows": n_rows,
                "cols": n_cols,
                "singular_values": sigma,
                **spectrum_metrics(sigma, top_k),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["depth", "layer_type"], kind="stable").reset_index(drop=True)
    return frame


def aggregate_analysis(frame: pd.DataFrame, by: str = "layer_type") -> pd.DataFrame:
    """Mean of the scalar metrics grouped by `layer_type` or `depth`, with the matrix count."""
    if by not in ("layer_type", "depth"):
        raise ValueError(f"aggregate by 'layer_type' or 'depth', not {by!r}")
    scalars = [c for c in frame.columns if c.startswith("top") or c in _SUMMARY_COLUMNS]
    scalars += ["sigma_max", "frobenius_norm"]
    grouped = frame.groupby(by, sort=True)
    out = grouped[scalars].mean()
    out.insert(0, "matrices", grouped.size())
    return out.reset_index()


def _mean_spectrum(frame: pd.DataFrame, max_points: int) -> np.ndarray:
    spectra = list(frame["spectrum_normalised"])
    width = min(max(len(s) for s in spectra), max_points)
    padded = np.zeros((len(spectra), width))
    for i, s in enumerate(spectra):
        padded[i, : min(len(s), width)] = s[:width]
    return padded


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (temp file + rename) so a crash leaves no half image."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_spectra(
    arms: Mapping[str, pd.DataFrame], path: str | os.PathLike, max_points: int = 64
) -> Path:
    """Normalised spectra σᵢ/σ₁ of every arm overlaid: mean over matrices, band = 10-90%.

    `max_points` caps the x axis (directions past a LoRA's rank are ~0 anyway).
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, frame in arms.items():
        if frame.empty:
            continue
        spectra = _mean_spectrum(frame, max_points)
        x = np.arange(1, spectra.shape[1] + 1)
        (line,) = ax.plot(x, spectra.mean(0), label=f"{arm} (mean of {len(spectra)})")
        low, high = np.percentile(spectra, [10, 90], axis=0)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("singular direction i")
    ax.set_ylabel("σᵢ / σ₁")
    ax.set_title("Normalised singular-value spectra of ΔW")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def plot_effective_rank(arms: Mapping[str, pd.DataFrame], path: str | os.PathLike) -> Path:
    """Effective rank of every adapted matrix (ordered by depth, then layer type), one line per arm."""
    fig, ax = plt.subplots(
        figsize=(max(7, 0.25 * max((len(f) for f in arms.values()), default=0)), 4.5)
    )
    labels: list[str] = []
    for arm, frame in arms.items():
        if frame.empty:
            continue
        ordered = frame.sort_values(["depth", "layer_type"], kind="stable")
        names = [f"{d}.{t}" for d, t in zip(ordered["depth"], ordered["layer_type"], strict=True)]
        labels = names if len(names) > len(labels) else labels
        ax.plot(range(len(names)), ordered["effective_rank"], marker="o", ms=3, label=arm)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_xlabel("layer (depth.type)")
    ax.set_ylabel("effective rank exp(H(σ/Σσ))")
    ax.set_title("Effective rank of ΔW per adapted matrix")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def seed_spread(arms: Mapping[str, pd.DataFrame], metric: str = "effective_rank") -> dict:
    """arm -> (mean, sd, seeds) of the per-seed mean of `metric`, for frames with a `seed`
    column (the pipeline's, one row per matrix and seed); sd is 0 for one seed."""
    out = {}
    for arm, frame in arms.items():
        if frame.empty:
            continue
        per_seed = frame.groupby("seed")[metric].mean() if "seed" in frame else frame[metric][:0]
        values = per_seed.to_numpy() if len(per_seed) else np.array([frame[metric].mean()])
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[arm] = (float(values.mean()), sd, len(values))
    return out


def _seed_verdict(arms: Mapping[str, pd.DataFrame]) -> str:
    """Whether the arms' effective ranks and top-1 energy shares differ by more than their
    seeds do (two sds)."""
    verdicts = []
    for metric, label in (("effective_rank", "effective rank"), ("top1_energy", "top-1 energy")):
        if not all(metric in f for f in arms.values() if not f.empty):
            continue
        spread = seed_spread(arms, metric)
        if len(spread) < 2 or all(n == 1 for _, _, n in spread.values()):
            return ""
        parts = ", ".join(
            f"**{a}** {m:.3f} ± {sd:.3f} ({n} seeds)" for a, (m, sd, n) in spread.items()
        )
        (a, (ma, sa, _)), (b, (mb, sb, _)) = sorted(
            spread.items(), key=lambda kv: kv[1][0], reverse=True
        )[:2]
        noise = 2 * max(sa, sb)
        if ma - mb > noise:
            how = f"more than the seeds do: {ma - mb:.3f} > twice the larger sd ({noise:.3f})"
        else:
            how = f"no more than the seeds do: {ma - mb:.3f} <= twice the larger sd ({noise:.3f})"
        verdicts.append(f"Mean {label} over seeds: {parts}. **{a}** and **{b}** differ by {how}.")
    return "".join(v + "\n\n" for v in verdicts)


def summarise_flatness(arms: Mapping[str, pd.DataFrame]) -> str:
    """Short markdown: a table of mean spectrum metrics per arm, which arm is flatter by how
    much, and (frames with a `seed` column, several seeds) whether the arms differ by more
    than their seeds do.

    Flatter = higher mean effective rank (the update spreads over more directions).
    """
    stats = {}
    for arm, frame in arms.items():
        if frame.empty:
            continue
        row = {c: float(frame[c].mean()) for c in _SUMMARY_COLUMNS}
        top = sorted(
            (c for c in frame.columns if re.fullmatch(r"top\d+_energy", c)),
            key=lambda c: int(c[3:-7]),
        )
        row.update({c: float(frame[c].mean()) for c in top})
        row["matrices"] = len(frame)
        stats[arm] = row
    if not stats:
        return "No adapted matrices to analyse."
    columns = [c for c in next(iter(stats.values())) if c != "matrices"]
    lines = [
        "| arm | matrices | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for arm, row in stats.items():
        cells = []
        for c in columns:  # with several seeds: the mean over seeds ± their sd
            mean, sd, seeds = seed_spread({arm: arms[arm]}, c)[arm]
            cells.append(f"{mean:.3f} ± {sd:.3f}" if seeds > 1 else f"{row[c]:.3f}")
        lines.append(f"| {arm} | {row['matrices']} | " + " | ".join(cells) + " |")
    ranked = sorted(stats, key=lambda a: stats[a]["effective_rank"], reverse=True)
    best = ranked[0]
    if len(ranked) == 1:
        verdict = (
            f"Only one arm (**{best}**): mean effective rank {stats[best]['effective_rank']:.2f}."
        )
    else:
        runner = ranked[1]
        a, b = stats[best]["effective_rank"], stats[runner]["effective_rank"]
        if a == b:
            verdict = f"**{best}** and **{runner}** are equally flat (mean effective rank {a:.2f})."
        else:
            ratio = f"{a / b:.2f}x" if b > 0 else "from zero"
            verdict = (
                f"**{best}** has the flatter spectrum: mean effective rank {a:.2f} vs {b:.2f} "
                f"for **{runner}** ({ratio}, +{a - b:.2f})"
            )
            if "top1_energy" in stats[best]:
                verdict += (
                    f"; its top direction holds {stats[best]['top1_energy']:.1%} of the energy "
                    f"vs {stats[runner]['top1_energy']:.1%}"
                )
            verdict += "."
    return verdict + "\n\n" + _seed_verdict(arms) + "\n".join(lines) + "\n"
