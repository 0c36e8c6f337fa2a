"""The results page's pure parts (textebm/experiments/results.py): the energy gap over training, the
publication's figures beside the runs."""

import pytest

from textebm.experiments.results import _energy_gap_section, _published_table, energy_gaps


def _records(gaps, seconds_per_step=6.0):
    return [{"kind": "train", "step": i + 1, "energy_gap": g, "cpu_seconds": (i + 1) * seconds_per_step}
            for i, g in enumerate(gaps)]


def test_energy_gaps_average_each_quarter_of_the_cpu_time_and_smooth_the_curve():
    climbing = [float(i) for i in range(40)]  # one gap per 6 CPU s: 4 minutes, 10 records a quarter
    runs = [{"label": "EBM", "corpus": "ptb", "run": "ebm", "records": _records(climbing)},
            {"label": "LM", "corpus": "ptb", "run": "lm", "records": [{"kind": "train", "step": 1, "cpu_seconds": 6}]}]
    (curve,) = energy_gaps(runs, window=4)  # the language model logs no energy gap: no curve
    assert curve["cpu_minutes_total"] == pytest.approx(4.0)
    assert curve["quarters"] == pytest.approx([4.5, 14.5, 24.5, 34.5])  # means of 0-9, 10-19, 20-29, 30-39
    assert curve["smoothed"][:4] == pytest.approx([0.0, 0.5, 1.0, 1.5]) and curve["smoothed"][-1] == pytest.approx(37.5)
    lines = _energy_gap_section([curve], {"ptb": "/x/energy_gap-ptb.png"})
    assert "## ptb: the energy gap over training" in lines and "![energy gap, ptb](energy_gap-ptb.png)" in lines
    assert "| EBM | 4 | 4.5 | 14.5 | 24.5 | 34.5 |" in lines


def test_a_settled_gap_reads_flat_across_the_quarters():
    settled = [min(float(i), 10.0) for i in range(80)]
    (curve,) = energy_gaps([{"label": "EBM", "corpus": "ptb", "run": "ebm", "records": _records(settled)}])
    assert curve["quarters"][2] == curve["quarters"][3] == pytest.approx(10.0)
    assert curve["quarters"][0] < curve["quarters"][1] <= curve["quarters"][2]


def _spread(x):
    return {"mean": x, "sd": None}


def test_the_publication_sits_beside_the_runs_as_ratios_to_its_own_real_text():
    groups = [{"label": "EBM", "figures": {"fppl T=1": _spread(970.9), "fppl ratio T=1": _spread(6.053),
                                           "rppl T=1": _spread(512.3), "rppl ratio T=1": _spread(1.07),
                                           "nll": _spread(125.6), "real fppl": _spread(160.4)}}]
    published = {"source": "Paper, Table 2", "real_fppl": {"ptb": 100.36},
                 "rows": [{"corpus": "ptb", "model": "its EBM", "fppl": 107.45, "rppl": 181.54, "nll": 91.35},
                          {"corpus": "snli", "model": "its EBM", "fppl": 27.81}]}
    lines = _published_table(groups, published, "ptb")
    assert "| EBM | this grid | 970.9 (6.05x) | 512.3 (1.07x) | 125.6 |" in lines
    assert "| its EBM | Paper, Table 2 | 107.45 (1.07x) | 181.54 | 91.35 |" in lines  # 107.45 / 100.36
    assert "| real text | this grid | 160.4 |  |  |" in lines
    assert "| real text | Paper, Table 2 | 100.36 |  |  |" in lines
    assert sum(line.startswith("| its EBM") for line in lines) == 1  # SNLI's row stays in SNLI's section
    assert _published_table(groups, published, "yahoo") == [] and _published_table(groups, {}, "ptb") == []


def test_the_likelihood_table_says_whose_mi_and_active_units_it_shows():
    """The MI and active units are the model's own (E_x KL(p(z|x) || p(z)), the swap test), not the VAE papers':
    the legend names where a VAE's evaluation keeps those, by keys that its report does hold."""
    import inspect

    from textebm.evaluation.held_out import vae_figures
    from textebm.experiments.results import INTRO, _likelihood_table

    figures = {"mi": {"mean": 3.91, "sd": None}, "active_units": {"mean": 29, "sd": None}}
    header, _, row = _likelihood_table([{"label": "VAE", "seeds": [0], "figures": figures}])
    assert "| ESS | MI (E KL) | active units (swap) | gap |" in header and "| 3.91 | 29 |" in row
    for key in ("mutual_information_aggregate", "active_units_mean_variance"):
        assert f"vae.{key}" in INTRO and f'"{key}":' in inspect.getsource(vae_figures)


def test_the_training_table_keeps_a_dirty_trees_plus():
    """A run trained from a work tree that differed from its commit says so: the commit's `+` survives the
    table's short form."""
    from textebm.experiments.results import _training_section

    def run(name, commit):
        return {"name": name, "train": {"commit": commit, "step": 6, "machine": {"vector": "AVX2"}}}

    rows = [line for line in _training_section([run("clean", "a" * 40), run("dirty", "b" * 40 + "+")])
            if line.startswith(("| clean |", "| dirty |"))]
    assert [row.split("|")[2].strip() for row in rows] == ["a" * 8, "b" * 8 + "+"]
