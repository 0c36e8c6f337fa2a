"""Learning curves of a run, drawn from RUN/metrics.jsonl into a PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_bytes


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{folder} has no metrics.jsonl to plot")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_learning_curves(folder: Path, out: Path | None = None, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textebm.runs import load_config

    records = read_metrics(folder)
    prior = load_config(folder).prior
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") in ("valid", "epoch", "final")]
    if not train:
        raise UserError(f"{folder}/metrics.jsonl has no training records yet")
    fig, (ax_nll, ax_gap) = plt.subplots(1, 2, figsize=(11, 4))
    latent = prior != "none"  # a language model's validation NLL is exact: one curve
    ax_nll.plot([r["step"] for r in train], [r["nll_token"] for r in train], lw=0.8, alpha=0.6,
                label="train (posterior z)" if latent else "train")
    if valid:
        steps = [r["step"] for r in valid]
        ax_nll.plot(steps, [r["valid_nll_posterior"] for r in valid], "o-",
                    label="valid, posterior z" if latent else "valid")
        if latent:
            ax_nll.plot(steps, [r["valid_nll_prior"] for r in valid], "s--", label="valid, prior z")
    ax_nll.set(xlabel="step", ylabel="NLL per token (nats)", title="negative log-likelihood")
    ax_nll.legend()
    gap = [r for r in train if "energy_gap" in r]
    if gap:
        ax_gap.plot([r["step"] for r in gap], [r["energy_gap"] for r in gap], lw=0.8, label="f(z+) - f(z-)")
        ax_gap.axhline(0.0, color="grey", lw=0.5)
        ax_gap.legend()
    else:
        ax_gap.text(0.5, 0.5, f"prior={prior}: no energy", ha="center", va="center", transform=ax_gap.transAxes)
    ax_gap.set(xlabel="step", title="energy gap (posterior - prior)")
    fig.suptitle(title or Path(folder).name)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    out = Path(out) if out else Path(folder) / "learning_curves.png"
    atomic_write_bytes(out, buffer.getvalue())
    return out
