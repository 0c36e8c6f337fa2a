"""Figures as PNG: a run's learning curves (from RUN/metrics.jsonl), the quality-diversity picture
of one or several runs' decoding sweeps (from RUN/evaluation-<split>.json), time to quality, energy
gaps, and prior chains' energy profiles (`textebm chain --plot`)."""

from __future__ import annotations

import io
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_bytes


def read_metrics(folder: Path) -> list[dict]:
    """The records of RUN/metrics.jsonl (`training_log.read_records`), which must exist."""
    from textebm.training.training_log import METRICS, read_records

    if not (Path(folder) / METRICS).is_file():
        raise UserError(f"{folder} has no {METRICS} to plot")
    return read_records(folder)


X_AXES = {"step": ("step", None), "minutes": ("minutes (wall-clock, validation included)", "elapsed"),
          "cpu-minutes": ("training CPU minutes", "cpu_seconds")}


def plot_learning_curves(folder: Path, out: Path | None = None, title: str | None = None, x: str = "step") -> Path:
    """Training and validation NLL, latent usage and the energy gap (or the VAE's KL) against `x`:
    steps, wall-clock minutes or training CPU minutes (the clocks of every record, textebm.training.training_log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textebm.model.runs import load_config

    records = read_metrics(folder)
    config = load_config(folder)
    prior = config.prior
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") in ("valid", "epoch", "final")]
    if not train:
        raise UserError(f"{folder}/metrics.jsonl has no training records yet")
    if x not in X_AXES:
        raise UserError(f"x must be one of {', '.join(X_AXES)}, not {x!r}")
    xlabel, clock = X_AXES[x]
    if clock and any(clock not in r for r in train + valid):
        raise UserError(f"{folder}'s records carry no {clock} (a run trained before 2026-12-03): plot against steps")

    def at(r):
        return r["step"] if clock is None else r[clock] / 60
    fig, (ax_nll, ax_usage, ax_gap) = plt.subplots(1, 3, figsize=(16, 4))
    latent = prior != "none"  # a language model's validation NLL is exact: one curve
    ax_nll.plot([at(r) for r in train], [r["nll_token"] for r in train], lw=0.8, alpha=0.6,
                label="train (posterior z)" if latent else "train")
    if valid:
        steps = [at(r) for r in valid]
        ax_nll.plot(steps, [r["valid_nll_posterior"] for r in valid], "o-",
                    label="valid, posterior z" if latent else "valid")
        if latent:
            ax_nll.plot(steps, [r["valid_nll_prior"] for r in valid], "s--", label="valid, prior z")
    ax_nll.set(xlabel=xlabel, ylabel="NLL per token (nats)", title="negative log-likelihood")
    ax_nll.legend()
    usage = [r for r in valid if "valid_gap" in r]
    if latent and usage:
        steps = [at(r) for r in usage]
        ax_usage.plot(steps, [r["valid_gap"] for r in usage], "o-", color="C0", label="gap (nats/token)")
        ax_usage.axhline(0.0, color="grey", lw=0.5)
        ax_usage.set_ylabel("prior-z NLL - posterior-z NLL (nats/token)")
        ax_mi = ax_usage.twinx()
        ax_mi.plot(steps, [r["valid_rough_mi"] for r in usage], "s--", color="C1",
                   label="rough MI (nats; reads high, 0 when z is unused)")
        ax_mi.set_ylabel("rough MI (nats/sentence)")
        for r in usage:
            ax_usage.annotate(f"{r['valid_active_units']} AU", (at(r), r["valid_gap"]), fontsize=7,
                              textcoords="offset points", xytext=(0, 6), ha="center")
        lines = ax_usage.get_lines()[:1] + ax_mi.get_lines()
        ax_usage.legend(lines, [ln.get_label() for ln in lines], loc="upper left")
    else:
        ax_usage.text(0.5, 0.5, "no latent" if not latent else "no validation yet", ha="center", va="center",
                      transform=ax_usage.transAxes)
    ax_usage.set(xlabel=xlabel, title="is z used? (validation; AU = active units)")
    gap = [r for r in train if "energy_gap" in r]
    kl = [r for r in train if "kl" in r]
    if kl:  # the VAE: its KL term against the free-bits floor, and the KL weight
        ax_gap.plot([at(r) for r in kl], [r["kl"] for r in kl], lw=0.8, label="KL(q || p) per sentence")
        ax_gap.plot([at(r) for r in kl], [r["kl_floored"] for r in kl], lw=0.8, label="free-bits KL term")
        ax_gap.axhline(config.free_bits * config.latent_dim, color="grey", lw=0.5, ls="--", label="whole floor")
        ax_weight = ax_gap.twinx()
        ax_weight.plot([at(r) for r in kl], [r["kl_weight"] for r in kl], color="C3", lw=0.8)
        ax_weight.set(ylabel="KL weight (red)", ylim=(0, 1.05))
        ax_gap.legend(fontsize=8)
        ax_gap.set(xlabel=xlabel, ylabel="nats", title="the VAE's KL term")
    elif gap:
        ax_gap.plot([at(r) for r in gap], [r["energy_gap"] for r in gap], lw=0.8, label="f(z+) - f(z-)")
        ax_gap.axhline(0.0, color="grey", lw=0.5)
        bias = [r for r in valid if "valid_prior_chain_bias_f" in r]
        if bias:  # mean f of the prior chain's samples minus that of an exact sampler (AIS)
            ax_gap.plot([at(r) for r in bias], [r["valid_prior_chain_bias_f"] for r in bias], "o-", color="C3",
                        label="prior chain bias: mean f(chain) - mean f(exact)")
        ax_gap.legend(fontsize=8)
    else:
        ax_gap.text(0.5, 0.5, f"prior={prior}: no energy", ha="center", va="center", transform=ax_gap.transAxes)
    if not kl:
        ax_gap.set(xlabel=xlabel, ylabel="nats", title="energy gap (posterior - prior) and prior chain bias")
    fig.suptitle(title or Path(folder).name)
    return save_figure(fig, Path(out) if out else Path(folder) / "learning_curves.png")


FIGURE_FORMATS = ("png", "pdf", "svg")


def figure_format(out: Path) -> str:
    """The format `out`'s suffix names (PNG, or PDF and SVG for a paper); a UserError for another, before any
    work (a .pdf name once got PNG bytes)."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise UserError(f"{out}: a figure is written as .png, .pdf or .svg, not {Path(out).suffix or 'no suffix'}")
    return suffix


def save_figure(fig, out: Path) -> Path:
    """Lay out, render in the format `out`'s suffix names (`figure_format`) and write atomically; the figure
    is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=figure_format(out), dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def plot_quality_diversity(runs: list[tuple[str, dict]], out: Path, title: str | None = None) -> Path:
    """FPPL (quality: lower is more fluent) against RPPL (diversity and coverage: lower covers more of
    the real text) for each run's decoding sweep, one curve per run through its temperatures, greedy
    decoding marked apart, and real text as a point (Caccia et al. 2020: compare generators by such
    curves, not by one decoding). `runs`: (label, `textebm evaluate` JSON) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    real_points = set()
    for color, (label, evaluation) in enumerate(runs):
        gen = evaluation.get("generation")
        if not gen:
            raise UserError(f"{label}: its evaluation has no generated samples (evaluated with --fppl-samples 0)")
        rows = [r for r in gen["decodings"] if r["forward_ppl"] is not None]  # an all-empty decoding has none
        sampled = sorted((r for r in rows if not r["greedy"]), key=lambda r: r["temperature"])
        ax.plot([r["reverse_ppl"] for r in sampled], [r["forward_ppl"] for r in sampled], "o-", color=f"C{color}",
                label=label)
        for r in sampled:
            ax.annotate(f"T={r['temperature']:g}", (r["reverse_ppl"], r["forward_ppl"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        for r in rows:
            if r["greedy"]:
                ax.plot(r["reverse_ppl"], r["forward_ppl"], "x", color=f"C{color}", ms=9)
                ax.annotate("greedy", (r["reverse_ppl"], r["forward_ppl"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        real_points.add((gen["real_reference"]["reverse_ppl"], gen["real_lm_test_ppl"]))
    for i, (rppl, fppl) in enumerate(sorted(real_points)):
        ax.plot(rppl, fppl, "*", color="black", ms=14, label="real text" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="reverse perplexity (lower: more diverse, covers the real text)",
           ylabel="forward perplexity (lower: more fluent)", title=title or "quality-diversity (KenLM 5-grams)")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out))


def plot_time_to_quality(rows: list[dict], out: Path, title: str) -> Path:
    """NLL per sentence against training CPU minutes, one curve per model (mean over seeds, the spread as
    error bars); exact likelihoods (the language model) dashed.
    `rows`: `textebm.experiments.results.time_to_quality`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for color, label in enumerate(dict.fromkeys(r["label"] for r in rows)):
        points = [r for r in rows if r["label"] == label and r["nll"]["mean"] is not None]
        if points:
            ax.errorbar([r["cpu_minutes"] for r in points], [r["nll"]["mean"] for r in points],
                        yerr=[r["nll"]["sd"] or 0.0 for r in points], marker="o", capsize=3, color=f"C{color}",
                        ls="--" if all(r["exact"] for r in points) else "-", label=label)
    ax.set(xlabel="training CPU minutes (one thread, steps only)", ylabel="NLL per sentence (nats)", title=title)
    if ax.get_lines():
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_energy_gap(curves: list[dict], out: Path, title: str) -> Path:
    """The energy gap f(z+) - f(z-) of training against training CPU minutes, one curve per run (a
    moving mean over `curves[i]["window"]` logged steps). `curves`: `textebm.experiments.results.energy_gaps`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for color, curve in enumerate(curves):
        ax.plot(curve["cpu_minutes"], curve["smoothed"], color=f"C{color}", label=curve["label"])
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set(xlabel="training CPU minutes (one thread, steps only)", ylabel="f(z+) - f(z-) (nats)", title=title)
    if curves:
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_chain_profiles(result: dict, out: Path, title: str) -> Path:
    """f(z_t) and log p_alpha(z_t) against t, one line per chain; chosen steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_f, ax_log) = plt.subplots(1, 2, figsize=(11, 4))
    for chain in result["chains"]:
        t = range(len(chain["energy"]))
        ax_f.plot(t, chain["energy"], lw=1.0, label=f"chain {chain['chain'] + 1}")
        ax_log.plot(t, chain["log_density"], lw=1.0)
    for ax in (ax_f, ax_log):
        for step in result["steps"]:
            ax.axvline(step, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("Langevin step t")
    ax_f.set(ylabel="f(z_t)", title="energy f_alpha(z_t) (higher = more probable)")
    ax_log.set(ylabel="log p_alpha(z_t) + log Z", title="unnormalised log prior density f(z) - |z|^2/2sigma^2")
    if len(result["chains"]) <= 10:
        ax_f.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, Path(out))
