"""The results of a reproduced grid: one JSON file, the markdown tables of docs/results.md and a
quality-diversity figure per corpus, all from the runs' own evaluation reports (textebm.evaluation.reports).

Runs that differ only in their seed are one group: each figure is the mean over the group's seeds,
with the sample standard deviation as the spread (none for a single seed).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from textebm.experiments.grid import Grid, RunSpec
from textebm.io import atomic_write_text, json_safe


def _decoding_key(row: dict) -> str:
    return "greedy" if row["greedy"] else f"T={row['temperature']:g}"


def figures_of(report: dict, train: dict | None) -> dict:
    """The table's numbers of one evaluation report (and the training marker), flat, by name."""
    out = {"steps": report["step"], "nll": report["nll_per_sentence"], "nll_per_token": report["nll_per_token"],
           "ppl": report["perplexity"]}
    if report.get("nll_per_sentence_bound") is not None and not report["exact_likelihood"]:
        out["nll_bound"] = report["nll_per_sentence_bound"]  # plain logmeanexp's (evaluator 6 and later)
    if train is not None:
        out["minutes"] = train.get("train_minutes")
        out["cpu_minutes"] = train.get("train_cpu_minutes")
    if report["prior"] == "ebm":  # a Gaussian prior's log Z is exactly 0
        out["log_z"] = report["log_partition"]["log_z"]
        out["log_z_stderr"] = report["log_partition"].get("stderr")
        out["log_z_ess"] = (report["log_partition"].get("ais") or {}).get("ess")
    sampling = report["importance_sampling"]
    if sampling is not None:
        out["ess_mean"] = sampling["ess_mean"]
        out["is_samples"] = sampling["num_samples"]
    usage = report["latent_usage"]
    if usage is not None:
        out.update(mi=usage["mutual_information"], active_units=usage["active_units"], gap=usage["gap"],
                   latent_dim=report["latent_dim"])
    reconstruction = report.get("reconstruction")
    if reconstruction:
        out.update(bleu=reconstruction["bleu"], baseline_bleu=reconstruction["baseline_bleu"])
    bias = report.get("prior_chain_bias")
    if bias:
        out["prior_chain_bias_f"] = bias["prior_chain_bias_f"]
    generation = report["generation"]
    if generation is not None:
        real_fppl, real_rppl = generation["real_lm_test_ppl"], generation["real_reference"]["reverse_ppl"]
        out.update({"real fppl": real_fppl, "real rppl": real_rppl})
        for row in generation["decodings"]:
            key = _decoding_key(row)
            for name, value, real in (("fppl", row["forward_ppl"], real_fppl), ("rppl", row["reverse_ppl"], real_rppl)):
                out[f"{name} {key}"] = value
                out[f"{name} ratio {key}"] = None if value is None or not real else value / real
    return out


def _spread(values: list) -> dict:
    known = [v for v in values if isinstance(v, (int, float))]
    return {"mean": statistics.fmean(known) if known else None,
            "sd": statistics.stdev(known) if len(known) > 1 else None, "n": len(known), "values": values}


def results_data(grid: Grid, gathered: list[tuple[RunSpec, dict | None, dict]], command: str) -> dict:
    """`gathered`: per run, its training marker (None: not trained) and its reports by split (None: not
    evaluated). Returns the results file's content: runs, and groups of seeds with mean and spread."""
    runs, groups = [], {}
    for spec, train, reports in gathered:
        evaluations = {split: None if r is None else {"report": r["run"] + f"/evaluation-{split}.json",
                                                      "evaluated_text": r["evaluated_text"],
                                                      "figures": figures_of(r, train)}
                       for split, r in reports.items()}
        runs.append({"name": spec.name, "label": spec.label, "corpus": spec.corpus_name,
                     "train_split": spec.train_split, "preset": spec.preset, "set": list(spec.overrides),
                     "seed": spec.seed, "max_minutes": spec.max_minutes, "max_steps": spec.max_steps,
                     "max_cpu_minutes": spec.max_cpu_minutes, "keep_at": list(spec.keep_at),
                     "evaluate": {e.split: e.options for e in spec.evaluations}, "train": train,
                     "evaluations": evaluations})
        groups.setdefault(spec.group(), []).append(runs[-1])
    group_list = []
    for members in groups.values():
        first = members[0]
        for split in first["evaluations"]:
            done = [m for m in members if m["evaluations"][split] is not None]
            keys = list(dict.fromkeys(k for m in done for k in m["evaluations"][split]["figures"]))
            group_list.append({
                "label": first["label"], "corpus": first["corpus"], "split": split,
                "evaluated_text": done[0]["evaluations"][split]["evaluated_text"] if done else None,
                "train_split": first["train_split"], "runs": [m["name"] for m in members],
                "seeds": [m["seed"] for m in done], "missing": [m["name"] for m in members if m not in done],
                "figures": {k: _spread([m["evaluations"][split]["figures"].get(k) for m in done]) for k in keys}})
    return {"title": grid.title, "grid": str(grid.path), "command": command,
            "generated": time.strftime("%Y-%m-%d %H:%M"), "runs": runs, "groups": group_list,
            "published": grid.published}


def time_to_quality(points: list[dict]) -> list[dict]:
    """The kept marks' evaluations as curves: per corpus and group label, at each CPU minute, the NLL per
    sentence (mean and spread over seeds), its ESS and the latent's gap."""
    curves: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for point in points:
        curves.setdefault((point["corpus"], point["label"]), {}).setdefault(point["cpu_minutes"], []).append(point)
    rows = []
    for (corpus, label), marks in curves.items():
        for minutes, members in sorted(marks.items()):
            reports = [m["report"] for m in members]
            sampling = [r["importance_sampling"] for r in reports]
            rows.append({"corpus": corpus, "label": label, "cpu_minutes": minutes,
                         "seeds": [m["seed"] for m in members], "steps": _spread([m["step"] for m in members]),
                         "nll": _spread([r["nll_per_sentence"] for r in reports]),
                         "exact": all(r["exact_likelihood"] for r in reports),
                         "ess_mean": _spread([s["ess_mean"] if s else None for s in sampling]),
                         "gap": _spread([(r["latent_usage"] or {}).get("gap") for r in reports]),
                         "evaluated_text": reports[0]["evaluated_text"]})
    return rows


# ---- markdown ----------------------------------------------------------------------------------

GAP_WINDOW = 20  # logged training steps in the energy gap's moving mean


def energy_gaps(runs: list[dict], window: int = GAP_WINDOW) -> list[dict]:
    """The energy gap f(z+) - f(z-) over training, per EBM-prior run: `runs` items carry label, corpus,
    run and its training `records` (metrics.jsonl's train records with energy_gap and cpu_seconds).
    Each curve: CPU minutes, the gap's trailing moving mean over `window` records, and its mean over each
    quarter of the training CPU time (does it settle or keep climbing)."""
    curves = []
    for run in runs:
        points = [(r["cpu_seconds"] / 60, r["energy_gap"]) for r in run["records"]
                  if r.get("kind") == "train" and "energy_gap" in r and "cpu_seconds" in r]
        if not points:
            continue
        minutes = [m for m, _ in points]
        gaps = [g for _, g in points]
        smoothed = [statistics.fmean(gaps[max(0, i - window + 1):i + 1]) for i in range(len(gaps))]
        end = minutes[-1]
        quarters = [[g for m, g in points if q * end / 4 < m <= (q + 1) * end / 4 or (q == 0 and m == 0)]
                    for q in range(4)]
        curves.append({"label": run["label"], "corpus": run["corpus"], "run": run["run"], "window": window,
                       "cpu_minutes": minutes, "smoothed": smoothed, "cpu_minutes_total": end,
                       "quarters": [statistics.fmean(q) if q else None for q in quarters]})
    return curves


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, int) or (abs(x) >= 100 and float(x).is_integer()):
        return f"{int(x):,}" if abs(x) >= 10_000 else str(int(x))
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:,.1f}"


def _cell(spread: dict | None, digits: int = 4, ratio: dict | None = None) -> str:
    if spread is None or spread["mean"] is None:
        return "—"
    text = _num(spread["mean"], digits)
    if spread["sd"] is not None:
        text += f" ± {_num(spread['sd'], 2)}"
    if ratio is not None and ratio["mean"] is not None:
        text += f" ({ratio['mean']:.2f}x)"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


INTRO = ("Where a model has several seeds: mean ± sample standard deviation over the seeds (the seeds column "
         "names them). NLL in nats per sentence by importance sampling (the language model's is exact), the "
         "jackknife of logmeanexp; NLL bound: the plain logmeanexp of the same weights (above the NLL by the bias "
         "the jackknife removes; a stochastic upper bound when log Z is exact); PPL per "
         "token; log Z of the EBM prior by annealed importance sampling (standard error, AIS effective sample "
         "size); ESS: mean effective sample size of the importance weights (of S draws); MI: the model's own "
         "E_x KL(p(z|x) || p(z)) in nats per sentence, which over real text bounds the aggregate posterior's "
         "I(x; z) from above (a VAE's evaluation also holds He et al.'s aggregate MI, the figure VAE papers report: "
         "vae.mutual_information_aggregate); active units: the coordinates whose swap for a prior draw costs the "
         "decoder over 0.1 nat per sentence (a VAE's evaluation also holds Burda et al.'s Var_x E_q[z_i] > 0.01: "
         "vae.active_units_mean_variance); "
         "gap: prior-z minus posterior-z NLL in nats per token; FPPL and RPPL: KenLM 5-grams, with the ratio to "
         "real text under the same evaluator.")


def markdown(data: dict, figures: dict[tuple[str, str], str]) -> str:
    """The results page: per corpus and split its tables and figure; the time-to-quality curves; the runs."""
    lines = [f"# {data['title']}", "",
             f"Generated {data['generated']} by `{data['command']}` from the grid `{data['grid']}`. {INTRO}", ""]
    sections: dict[tuple[str, str], list[dict]] = {}
    for group in data["groups"]:
        sections.setdefault((group["corpus"], group["split"]), []).append(group)
    for (corpus, split), groups in sections.items():
        evaluated = next((g["evaluated_text"] for g in groups if g["evaluated_text"]), split)
        lines += [f"## {corpus}: trained on {groups[0]['train_split']}, evaluated on {evaluated}", ""]
        lines += _likelihood_table(groups) + _checks_table(groups) + _samples_tables(groups)
        lines += _published_table(groups, data.get("published") or {}, corpus)
        if (corpus, split) in figures:
            lines += ["", f"![quality-diversity, {corpus}]({Path(figures[(corpus, split)]).name})"]
        missing = [name for g in groups for name in g["missing"]]
        if missing:
            lines += ["", f"Not yet evaluated: {', '.join(missing)}."]
        lines.append("")
    lines += _time_to_quality_section(data.get("time_to_quality", []), data.get("time_to_quality_figures", {}))
    lines += _energy_gap_section(data.get("energy_gaps", []), data.get("energy_gap_figures", {}))
    lines += _training_section(data["runs"])
    return "\n".join(lines + ["## Runs", ""] + _runs_table(data["runs"])) + "\n"


def _time_to_quality_section(rows: list[dict], figures: dict[str, str]) -> list[str]:
    lines = []
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        mine = [r for r in rows if r["corpus"] == corpus]
        lines += [f"## {corpus}: quality against training CPU time", "",
                  f"Each run as it was after M minutes of training CPU time (one thread, steps only), evaluated on "
                  f"{mine[0]['evaluated_text']}: NLL per sentence (exact for the language model, importance-sampled "
                  f"for latent models, with the mean ESS of the draws), and the gap in nats per token.", ""]
        lines += _table(["model", "seeds", "CPU min", "steps", "NLL", "ESS", "gap"],
                        [[r["label"], ", ".join(map(str, r["seeds"])), _num(r["cpu_minutes"]), _cell(r["steps"]),
                          _cell(r["nll"]) + (" (exact)" if r["exact"] else ""), _cell(r["ess_mean"], 3),
                          _cell(r["gap"], 3)] for r in mine])
        if corpus in figures:
            lines += ["", f"![time to quality, {corpus}]({Path(figures[corpus]).name})"]
        lines.append("")
    return lines


def _energy_gap_section(curves: list[dict], figures: dict[str, str]) -> list[str]:
    lines = []
    for corpus in dict.fromkeys(c["corpus"] for c in curves):
        mine = [c for c in curves if c["corpus"] == corpus]
        lines += [f"## {corpus}: the energy gap over training", "",
                  "The EBM prior's f(z+) - f(z-) as training logged it (posterior codes minus prior-chain codes, "
                  "nats), its mean over each quarter of the run's training CPU time: a gap that keeps climbing "
                  "says the energy sharpens faster than the prior chain follows (docs/inference.md); the figure "
                  f"shows its moving mean over {mine[0]['window']} logged steps.", ""]
        lines += _table(["run", "CPU min", "1st quarter", "2nd", "3rd", "4th"],
                        [[c["label"], _num(c["cpu_minutes_total"], 3), *(_num(q, 3) for q in c["quarters"])]
                         for c in mine])
        if corpus in figures:
            lines += ["", f"![energy gap, {corpus}]({Path(figures[corpus]).name})"]
        lines.append("")
    return lines


TRAINING_INTRO = (
    "Each trained run as its training left it: the commit of its last training segment, the CPU it ran on "
    "(CPU-time budgets buy equal work only on equal vector units), its steps, training CPU minutes and "
    "wall minutes (every segment, validations included), and its last validation: NLL per token with "
    "posterior codes (a reconstruction figure, not a likelihood) and with prior draws, their gap (is z "
    "used), active units, and for the EBM prior log Z by AIS and the prior chain's bias in mean f against "
    "an exact sampler. The likelihoods to compare models by are the evaluations' above.")


def _training_section(runs: list[dict]) -> list[str]:
    trained = [r for r in runs if r["train"] is not None]
    if not trained:
        return []
    rows = []
    for run in trained:
        train, valid = run["train"], run["train"].get("validation") or {}
        machine = train.get("machine") or {}
        unit = machine.get("vector") or "—"
        if machine.get("amx"):
            unit += " + AMX"
        commit = train.get("commit") or "—"
        rows.append([run["name"], commit[:8] + ("+" if commit.endswith("+") else ""), unit, str(train["step"]),
                     _num(train.get("train_cpu_minutes"), 3), _num(train.get("train_minutes"), 3)]
                    + [_num(valid.get(key), digits) for key, digits in (
                        ("valid_nll_posterior", 4), ("valid_nll_prior", 4), ("valid_gap", 3),
                        ("valid_active_units", 3), ("valid_log_z", 4), ("valid_prior_chain_bias_f", 3))])
    return ["## Training", "", TRAINING_INTRO, ""] + _table(
        ["run", "commit", "CPU", "steps", "CPU min", "wall min", "valid NLL/token, posterior z", "prior z", "gap",
         "active units", "log Z", "prior-chain bias of f"], rows) + [""]


def _likelihood_table(groups: list[dict]) -> list[str]:
    rows = []
    for g in groups:
        f = g["figures"]
        log_z = _cell(f.get("log_z"))
        if f.get("log_z_stderr") and f["log_z_stderr"]["mean"] is not None:
            ais_ess = (f.get("log_z_ess") or {}).get("mean")
            log_z += f" (s.e. {f['log_z_stderr']['mean']:.2g}" + ("" if ais_ess is None else f", ESS {ais_ess:.0f}")
            log_z += ")"
        ess = _cell(f.get("ess_mean"), 3) + (f" of {_num(f['is_samples']['mean'])}" if f.get("is_samples") else "")
        units = _cell(f.get("active_units"), 3) + (f" of {_num(f['latent_dim']['mean'])}" if f.get("latent_dim")
                                                   else "")
        rows.append([g["label"], _seeds(g), _cell(f.get("steps")), _cell(f.get("cpu_minutes"), 3),
                     _cell(f.get("minutes"), 3), _cell(f.get("nll")), _cell(f.get("nll_bound")),
                     _cell(f.get("ppl")), log_z, ess, _cell(f.get("mi"), 3), units, _cell(f.get("gap"), 3)])
    return _table(["model", "seeds", "steps", "CPU min", "minutes", "NLL", "NLL bound", "PPL", "log Z", "ESS",
                   "MI (E KL)", "active units (swap)", "gap"], rows)


def _checks_table(groups: list[dict]) -> list[str]:
    """Is z used (reconstruction against prior samples), and does the prior chain sample the EBM?"""
    checks = [g for g in groups if "bleu" in g["figures"] or "prior_chain_bias_f" in g["figures"]]
    if not checks:
        return []
    columns = (("bleu", 3), ("baseline_bleu", 3), ("prior_chain_bias_f", 2))
    rows = [[g["label"], _seeds(g)] + [_cell(g["figures"].get(key), digits) for key, digits in columns]
            for g in checks]
    return ["", "Reconstruction BLEU of the sentences from their codes, against greedy decodings of prior samples; "
                "the prior chain's mean f minus the EBM's (by AIS), in nats:", ""] + _table(
        ["model", "seeds", "reconstruction BLEU", "prior-sample BLEU", "prior-chain bias of f"], rows)


def _samples_tables(groups: list[dict]) -> list[str]:
    """FPPL and RPPL per decoding of the sweep, with their ratios to real text, and the real-text row."""
    decodings = list(dict.fromkeys(k.split(" ", 1)[1] for g in groups for k in g["figures"]
                                   if k.startswith("fppl ") and not k.startswith("fppl ratio ")))
    if not decodings:
        return []
    lines = []
    for name, title in (("fppl", "FPPL (÷ real text)"), ("rppl", "RPPL (÷ real text)")):
        rows = [[g["label"], _seeds(g)] + [_cell(g["figures"].get(f"{name} {d}"), 4,
                                                 g["figures"].get(f"{name} ratio {d}")) for d in decodings]
                for g in groups]
        real = next((g["figures"][f"real {name}"] for g in groups if f"real {name}" in g["figures"]), None)
        real_cell = "—" if real is None else _num(real["mean"])  # one text, one number: no spread
        rows.append(["real text (same evaluator)", ""] + [real_cell] + [""] * (len(decodings) - 1))
        lines += ["", f"{title}:", ""] + _table(["model", "seeds", *decodings], rows)
    return lines


PUBLISHED_DECODING = "T=1"  # ancestral sampling, as the papers sample


def _published_table(groups: list[dict], published: dict, corpus: str) -> list[str]:
    """The corpus's runs beside a publication's figures, FPPL as a ratio to real text under each one's
    own evaluator (absolute perplexities of different LMs do not compare)."""
    rows = [r for r in published.get("rows", []) if r["corpus"] == corpus]
    if not rows:
        return []
    key = PUBLISHED_DECODING
    ours = [[g["label"], "this grid", _cell(g["figures"].get(f"fppl {key}"), 4, g["figures"].get(f"fppl ratio {key}")),
             _cell(g["figures"].get(f"rppl {key}"), 4, g["figures"].get(f"rppl ratio {key}")),
             _cell(g["figures"].get("nll"))] for g in groups]
    real = next((g["figures"]["real fppl"]["mean"] for g in groups if "real fppl" in g["figures"]), None)
    ours.append(["real text", "this grid", _num(real), "", ""])
    base = published.get("real_fppl", {}).get(corpus)
    def as_published(x) -> str:
        return "—" if x is None else f"{x:g}"

    theirs = [[row["model"], published["source"],
               as_published(row.get("fppl")) + (f" ({row['fppl'] / base:.2f}x)" if base and row.get("fppl") else ""),
               as_published(row.get("rppl")), as_published(row.get("nll"))] for row in rows]
    theirs.append(["real text", published["source"], as_published(base), "", ""])
    caption = (f"Beside {published['source']}: FPPL and RPPL of samples at {key} (ancestral sampling), with their "
               "ratios to real text under the same evaluator (the publication's LM is not ours: compare the FPPL "
               "ratios; it gives no real-text RPPL), NLL in nats per sentence on each one's own test text:")
    return ["", caption, ""] + _table(["model", "source", f"FPPL {key} (÷ real)", f"RPPL {key}", "NLL"], ours + theirs)


def _runs_table(runs: list[dict]) -> list[str]:
    rows = []
    for run in runs:
        budget = " / ".join(x for x in (f"{run['max_cpu_minutes']:g} CPU min" if run.get("max_cpu_minutes") else "",
                                        f"{run['max_minutes']:g} min" if run["max_minutes"] else "",
                                        f"{run['max_steps']} steps" if run["max_steps"] else "") if x)
        train = run["train"]
        done = "—" if train is None else f"{train['step']} steps, {train['train_minutes']:.1f} min"
        evaluate = "; ".join(f"{split}: " + (" ".join(f"{k}={v}" for k, v in options.items()) or "defaults")
                             for split, options in run["evaluate"].items())
        rows.append([run["name"], run["label"], run["corpus"], run["train_split"], run["preset"],
                     " ".join(f"`{s}`" for s in run["set"]), str(run["seed"]), budget, done, evaluate])
    return _table(["run", "model", "corpus", "trained on", "preset", "--set", "seed", "budget", "trained", "evaluate"],
                  rows)


def _seeds(group: dict) -> str:
    return ", ".join(map(str, group["seeds"])) or "—"


def write_results(out: Path, data: dict, reports: dict[tuple[str, str], list[tuple[str, dict]]],
                  marks: list[dict] = (), gap_runs: list[dict] = ()) -> list[Path]:
    """OUT/results.json, OUT/results.md, OUT/quality_diversity-<corpus>-<split>.png (one curve per
    evaluated run with a decoding sweep; `reports` by (corpus, split): (label, report) pairs),
    OUT/time_to_quality-<corpus>.png (from the evaluated marks, `reproduce.gather_marks`) and
    OUT/energy_gap-<corpus>.png (the EBM-prior runs' training records, `reproduce.gather_energy_gaps`)."""
    from textebm.evaluation.plots import plot_energy_gap, plot_quality_diversity, plot_time_to_quality

    out = Path(out)
    figures = {}
    for (corpus, split), pairs in reports.items():
        pairs = [(label, r) for label, r in pairs if r.get("generation")]
        if pairs:
            path = out / f"quality_diversity-{corpus}-{split}.png"
            title = f"{corpus} ({split}): quality-diversity"
            figures[(corpus, split)] = str(plot_quality_diversity(pairs, path, title))
    curves = time_to_quality(list(marks))
    ttq_figures = {}
    for corpus in dict.fromkeys(r["corpus"] for r in curves):
        rows = [r for r in curves if r["corpus"] == corpus]
        path = out / f"time_to_quality-{corpus}.png"
        ttq_figures[corpus] = str(plot_time_to_quality(rows, path, f"{corpus}: time to quality"))
    gaps = energy_gaps(list(gap_runs))
    gap_figures = {}
    for corpus in dict.fromkeys(c["corpus"] for c in gaps):
        path = out / f"energy_gap-{corpus}.png"
        gap_figures[corpus] = str(plot_energy_gap([c for c in gaps if c["corpus"] == corpus], path,
                                                  f"{corpus}: energy gap over training"))
    data = {**data, "figures": {f"{c} {s}": p for (c, s), p in figures.items()}, "time_to_quality": curves,
            "time_to_quality_figures": ttq_figures,
            "energy_gaps": [{k: v for k, v in c.items() if k not in ("cpu_minutes", "smoothed")} for c in gaps],
            "energy_gap_figures": gap_figures}
    atomic_write_text(out / "results.json", json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "results.md", markdown(data, figures))
    return [out / "results.json", out / "results.md", *map(Path, figures.values()), *map(Path, ttq_figures.values()),
            *map(Path, gap_figures.values())]

