"""`textebm evaluate`: the JSON report and its copy in the run folder; bad input exits 2 with one line."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from textebm.config import Config
from textebm.data.vocab import WordVocab
from textebm.devices import resolve_chain_precision
from textebm.model.checkpoints import save_checkpoint
from textebm.model.runs import build_model, create_run


def _main(argv):
    from textebm import cli

    return cli.main(argv)


@pytest.fixture
def invoke(capsys):
    def run(*args):
        capsys.readouterr()
        try:
            status = _main(["evaluate", *map(str, args)])
        except SystemExit as exc:
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _make_run(folder, corpus, lines, prior="ebm", ends_at_once=False):
    """A tiny untrained run on `corpus` (written directly: no training needed to evaluate); `ends_at_once`:
    its decoder puts nearly all mass on `</s>`, so greedy decoding gives only empty sentences."""
    torch.manual_seed(0)
    config = Config(corpus=str(corpus), embedding_dim=8, hidden_dim=16, latent_dim=3, energy_hidden=8,
                    dropout=0.0, prior=prior, posterior_steps=3, prior_steps=3, max_length=30)
    vocab = WordVocab.build(lines)
    create_run(folder, config, vocab)
    model = build_model(config, vocab)
    if ends_at_once:
        with torch.no_grad():
            model.decoder.out.bias[vocab.eos_id] = 8.0
    save_checkpoint(folder, model, {}, step=7)
    return folder


FAST = ["--max-sentences", "12", "--num-chains", "3", "--num-is-samples", "8", "--partition-samples", "500",
        "--ais-chains", "50", "--ais-steps", "40", "--threads", "1", "--device", "cpu"]


def test_json_report_and_its_copy_in_the_run_folder(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "30", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report == json.loads((run / "evaluation-test.json").read_text())
    for key in ("nll_per_sentence", "perplexity", "perplexity_convention", "log_partition", "importance_sampling",
                "latent_usage", "generation", "elbo_per_sentence"):
        assert key in report, key
    assert report["num_sentences"] == 12 and report["step"] == 7 and report["split"] == "test"
    assert report["importance_sampling"]["num_chains"] == 3 and report["importance_sampling"]["num_samples"] == 8
    trust = report["importance_sampling"]  # the convergence check: the estimate from the first 8 // 10 = 1 draw
    assert trust["tenth_draws"] == 1 and 0 < trust["ess_share_mean"] <= 1
    assert trust["nll_change_from_tenth"] == pytest.approx(
        report["nll_per_sentence"] - trust["nll_per_sentence_tenth_draws"])
    moved = abs(trust["nll_change_from_tenth"]) > 0.2
    assert any("not converged" in w for w in report["warnings"]) is moved
    log_z = report["log_partition"]
    assert log_z["method"] == "annealed importance sampling" and log_z["stderr"] > 0
    assert log_z["ais"]["num_chains"] == 50 and log_z["ais"]["steps"] == 40
    assert log_z["monte_carlo"]["num_samples"] == 500
    assert abs(log_z["log_z"] - log_z["monte_carlo"]["log_z"]) < 0.5  # an untrained energy: both see its mass
    bias = report["prior_chain_bias"]
    assert bias["exact_mean_f"] == pytest.approx(bias["prior_chain_mean_f"] - bias["prior_chain_bias_f"])
    assert "short-run prior chain" in report["samples_from"]
    rec = report["reconstruction"]  # an untrained decoder: its copies are no better than prior samples
    assert rec["num_sentences"] == 12 and 0 <= rec["bleu"] <= 100 and "prior samples" in rec["comparison"]
    # Perplexity and NLL agree with each other; an untrained model is near-uniform over the vocabulary.
    assert report["nll_per_sentence"] * 12 / report["num_tokens"] == pytest.approx(
        __import__("math").log(report["perplexity"]), rel=1e-6)
    assert report["elbo_per_sentence"] <= -report["nll_per_sentence"] + 1e-6
    each = report["log_px_per_sentence"]  # the sentences' own estimates, for paired comparisons
    assert len(each) == 12 and -sum(each) / 12 == pytest.approx(report["nll_per_sentence"], abs=1e-4)
    assert len(set(each)) > 1
    assert 0 < report["cpu_seconds"] and 0 < report["seconds"]  # the work and the wall clock, both counted
    usage = report["latent_usage"]
    assert 0 <= usage["active_units"] <= 3 and len(usage["unit_sensitivity"]) == 3
    assert usage["gap"] == pytest.approx(usage["nll_prior"] - usage["nll_posterior"])
    gen = report["generation"]
    assert gen["n"] == 30
    # the decoding protocol: greedy and each temperature, each row saying how it decoded
    rows = {row["decoding"]: row for row in gen["decodings"]}
    assert list(rows) == ["greedy", "temperature 0.5", "temperature 0.7", "temperature 0.85", "temperature 1"]
    assert rows["greedy"]["greedy"] is True and rows["greedy"]["temperature"] is None
    assert rows["temperature 0.5"]["greedy"] is False and rows["temperature 0.5"]["temperature"] == 0.5
    for row in rows.values():
        assert row["num_samples"] + row["blank_lines"] == 30 and row["forward_ppl"] > 1 and row["reverse_ppl"] > 1
    # colder decoding of the same codes is less diverse than sampling at temperature 1
    assert rows["greedy"]["distinct_2"] < rows["temperature 1"]["distinct_2"]
    assert gen["real_lm"]["num_sentences"] == 300
    # real training lines through the same evaluator: their reverse LM models the test text far better
    real = gen["real_reference"]
    assert real["num_samples"] == 30 and real["reverse_ppl"] < rows["temperature 1"]["reverse_ppl"] / 2
    assert "random lines of the training text" in real["sentences"]
    # and the quality-diversity picture lies in the run folder
    figure = run / "quality_diversity-test.png"
    assert report["figure"] == str(figure) and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_goes_to_stderr_and_stdout_stays_one_json_object(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    args = ("--checkpoint", run, *FAST, "--fppl-samples", "10", "--temperatures", "1", "--json")
    status, out, err = invoke(*args, "--progress")
    assert status == 0, err
    assert out.endswith("\n") and out.count("\n") == 1 and isinstance(json.loads(out), dict)
    # the work, said beforehand; then a bar per stage with its rate and time left
    assert ("evaluate: log Z by AIS (50 chains x 40 + 20 temperatures) and 500 plain draws; 12 sentences x "
            "Laplace Gaussians at 3 tempered chain end(s) x 3 steps, 8 AIS chains x 60 temperatures each") in err
    assert "2 decodings x 10 sentences" in err
    assert "importance sampling: 100%" in err and "decoding sweep: 100%" in err and "sentence/s" in err
    # stderr is not a terminal here: without --progress nothing is shown
    status, out, err = invoke(*args)
    assert status == 0 and err == "" and out.count("\n") == 1


def test_compare_draws_several_runs_on_one_figure(invoke, tmp_path, corpus_folder, train_lines, cli,
                                                  one_line_error):
    runs = []
    for name, prior in (("ebm", "ebm"), ("gauss", "gaussian")):
        run = _make_run(tmp_path / name, corpus_folder, train_lines[:300], prior=prior)
        status, _, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "20", "--temperatures", "0.7", "1")
        assert status == 0, err
        runs.append(run)
    reports = [json.loads((run / "evaluation-test.json").read_text()) for run in runs]
    out = tmp_path / "both.png"
    status, stdout, err = cli("compare", *runs, "--out", out)
    assert status == 0, err
    assert stdout.strip().endswith(str(out)) and out.read_bytes()[:4] == b"\x89PNG"
    # the NLL table: each run's mean, the second's paired difference from the first on the same sentences
    header, first, second = stdout.splitlines()[:3]
    assert header.startswith(f"NLL per sentence (nats) on {reports[0]['num_sentences']} test sentences")
    assert first.split() == ["ebm", f"{reports[0]['nll_per_sentence']:.2f}"]
    label, nll, difference, _, stderr = second.split()
    expected = reports[1]["nll_per_sentence"] - reports[0]["nll_per_sentence"]
    assert (label, nll) == ("gauss", f"{reports[1]['nll_per_sentence']:.2f}")
    diffs = [a - b for a, b in zip(reports[0]["log_px_per_sentence"], reports[1]["log_px_per_sentence"])]
    assert abs(float(difference) - expected) < 0.006
    assert stderr == f"{statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}"
    # without per-sentence figures (a report of an older textebm) the table is refused, the figure still drawn
    del reports[1]["log_px_per_sentence"]
    (runs[1] / "evaluation-test.json").write_text(json.dumps(reports[1]))
    one_line_error(*cli("compare", *runs)[::2], "compare", "textebm evaluate")
    status, stdout, err = cli("compare", *runs, "--out", out)
    assert status == 0 and stdout.strip() == str(out) and "no NLL table" in err
    one_line_error(*cli("compare", runs[0], tmp_path, "--out", out)[::2], "compare", "textebm evaluate")
    one_line_error(*cli("compare", *runs, "--labels", "a", "--out", out)[::2], "compare", "--labels")
    one_line_error(*cli("compare", *runs, "--out", tmp_path / "both.jpg")[::2], "compare", "not .jpg")
    status, stdout, err = cli("compare", *runs, "--out", tmp_path / "both.pdf")  # PNG bytes under a .pdf name
    assert status == 0 and (tmp_path / "both.pdf").read_bytes()[:5] == b"%PDF-", err
    reports[0]["log_px_per_sentence"] = reports[0]["log_px_per_sentence"][:2]  # damaged: a traceback
    (runs[0] / "evaluation-test.json").write_text(json.dumps(reports[0]))
    one_line_error(*cli("compare", *runs)[::2], "compare", "damaged")
    one_line_error(*cli("compare", *runs, "--out", tmp_path)[::2], "compare",
                   f"cannot write {tmp_path}: it is a folder")


@pytest.mark.parametrize("report, fragment", [
    ("{ cut short", "is not JSON"),
    ("null", "holds no report"),  # a traceback
    (json.dumps({"nll_per_sentence": 80.0, "generation": {"greedy": {}}}),
     "was written before decoding sweeps: rerun textebm evaluate on"),
])
def test_compare_refuses_a_report_it_cannot_read(cli, tmp_path, one_line_error, report, fragment):
    run = tmp_path / "old"
    run.mkdir()
    (run / "evaluation-test.json").write_text(report, encoding="utf-8")
    for extra in ([], ["--out", tmp_path / "both.png"]):
        status, out, err = cli("compare", run, *extra)
        one_line_error(status, err, "compare", f"{run / 'evaluation-test.json'} ", fragment)
        assert out == "" and not (tmp_path / "both.png").exists()


def test_chain_settings_can_change_for_evaluation_only(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    saved = (run / "config.json").read_text()
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "0", "--json",
                              "--set", "posterior_noise=0", "--set", "posterior_step_size=0.5")
    assert status == 0, err
    chains = json.loads(out)["chains"]
    assert chains["posterior_noise"] == 0 and chains["posterior_step_size"] == 0.5 and chains["prior_noise"] == 1
    assert (run / "config.json").read_text() == saved  # the run itself is untouched
    _one_line(*invoke("--checkpoint", run, *FAST, "--set", "hidden_dim=8")[::2], "only the chain settings")
    _one_line(*invoke("--checkpoint", run, *FAST, "--set", "posterior_noise=-1")[::2], "posterior_noise")


def test_human_table_gaussian_prior_and_skipped_generation(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300], prior="gaussian")
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "0")
    assert status == 0, err
    assert "NLL per sentence" in out and "skipped: --fppl-samples 0" in out and "estimator:" in out
    report = json.loads((run / "evaluation-test.json").read_text())
    assert report["log_partition"]["log_z"] == 0.0 and "exact" in report["log_partition"]["method"]
    assert report["prior_chain_bias"] is None and "exactly from the Gaussian prior" in report["samples_from"]


def test_a_held_out_file_changed_since_training_is_named_in_the_report(invoke, tmp_path, corpus_folder, train_lines):
    from textebm.data.corpora import open_corpus, record_of

    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300], prior="gaussian")
    (run / "corpus.json").write_text(json.dumps(record_of(open_corpus(str(corpus_folder)))), encoding="utf-8")
    test = corpus_folder / "test.txt"
    test.write_text(test.read_text(encoding="utf-8") + "one more held-out line\n", encoding="utf-8")
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "0")
    assert status == 0, err
    assert f"WARNING: {corpus_folder}'s test split ({test.resolve()}) is not the text the run was trained with" in out
    report = json.loads((run / "evaluation-test.json").read_text())
    assert "is not the text the run was trained with" in report["warnings"][0]
    train = corpus_folder / "train.txt"
    assert report["corpus_files"] == {"train": str(train.resolve()), "test": str(test.resolve())}


def test_a_decoding_whose_sentences_are_all_empty_gets_a_row_and_a_warning_not_an_exit(invoke, tmp_path,
                                                                                      corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300], prior="gaussian", ends_at_once=True)
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "20", "--temperatures", "3")
    assert status == 0, err
    report = json.loads((run / "evaluation-test.json").read_text())
    greedy, hot = report["generation"]["decodings"]
    assert greedy["forward_ppl"] is None and greedy["num_samples"] == 0 and "empty" in greedy["note"]
    assert hot["forward_ppl"] > 0 and hot["num_samples"] > 0  # at temperature 3 some sentences have words
    assert any(w.startswith("greedy: all 20 sentences were empty") for w in report["warnings"])
    assert "greedy" in out and "n/a" in out


def test_a_language_model_run_reports_its_exact_likelihood(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300], prior="none")
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "0")
    assert status == 0, err
    assert "exact (prior=none" in out and "IS:" not in out
    report = json.loads((run / "evaluation-test.json").read_text())
    assert report["exact_likelihood"] and report["importance_sampling"] is None and report["reconstruction"] is None
    assert report["latent_usage"] is None and report["latent_dim"] == 0 and report["nll_per_sentence"] > 0


def _one_line(status, err, *fragments):
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textebm evaluate: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_annealed_importance_sampling_per_sentence_is_reported_as_such(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    status, out, err = invoke("--checkpoint", run, *FAST, "--anneal-steps", "5", "--fppl-samples", "0", "--progress")
    assert status == 0, err
    native = resolve_chain_precision("auto", torch.device("cpu"))  # --path-precision auto: bf16 where native
    assert f"AIS from the Laplace Gaussian: chains x temperatures per sentence  8 x 5 (path in {native})" in out
    assert "8 AIS chains x 5 temperatures each" in err  # --num-is-samples 8 of FAST
    report = json.loads((run / "evaluation-test.json").read_text())
    isd = report["importance_sampling"]
    assert isd["anneal_steps"] == 5 and isd["anneal_schedule"] == "linear" and isd["path_precision"] == native
    assert isd["path_shortlist"] == 128  # the default: the path below beta = 1 on each sentence's shortlist
    assert "annealed importance sampling chains" in isd["estimator"]
    assert 1 <= isd["ess_mean"] <= 8 and report["latent_usage"]["mutual_information"] is not None
    check = isd["half_schedule"]  # AIS's convergence check: the first 12 sentences again on 2 temperatures
    assert check["sentences"] == 12 and check["anneal_steps"] == 2
    assert check["nll_per_sentence_full"] == pytest.approx(report["nll_per_sentence"], rel=1e-6)
    moved = abs(check["nll_change_from_half"]) > max(0.2, 3 * check["nll_change_stderr"])
    assert check["nll_change_stderr"] > 0
    assert any("from 2 to 5 temperatures" in w for w in report["warnings"]) is moved
    draws = isd["draws_check"]  # and again with 4 x 8 chains, in step groups of 8: four runs of the estimator
    assert (draws["sentences"], draws["num_samples"], draws["more_samples"]) == (12, 8, 32)
    assert draws["nll_change_with_more"] == pytest.approx(draws["nll_per_sentence_more"]
                                                          - draws["nll_per_sentence_default"])
    assert draws["nll_change_stderr"] > 0 and draws["nll_per_sentence_default"] > 0
    moved = abs(draws["nll_change_with_more"]) > max(0.2, 3 * draws["nll_change_stderr"])
    assert any("from 8 to 32 AIS chains" in w for w in report["warnings"]) is moved
    assert "32 AIS chains per sentence instead of 8, first 12 sentences" in err
    # the table shows both checks and the CPU time (they were in the JSON only), not IS's first-tenth row, and
    # says that 12 sentences are few for active units (5 read 0 of 32 on a run whose 300 read 32)
    table = dict(re.split(r"  +", line, maxsplit=1) for line in out.splitlines() if re.search(r"\S  +\S", line))
    from textebm.cli.common import cell as _fmt

    half = f"{_fmt(check['nll_per_sentence_half'])} / {_fmt(check['nll_per_sentence_full'])}"
    assert table["AIS check: NLL with half / all temperatures (s.e.; 12 sentences)"].startswith(half)
    more = f"{_fmt(draws['nll_per_sentence_default'])} / {_fmt(draws['nll_per_sentence_more'])}"
    assert table["AIS check: NLL with 8 / 32 chains (s.e.; 12 sentences)"].startswith(more)
    assert table["seconds (CPU seconds)"].endswith(f"({_fmt(report['cpu_seconds'])})")
    assert "active units (first 12 sentences)" in table and "draws (change)" not in out
    assert "active units: 12 sentences are few for the test" in out


def test_the_ais_path_precision_and_shortlist_are_checked_and_reported(invoke, tmp_path, corpus_folder,
                                                                      train_lines):
    from textebm.errors import UserError
    from textebm.evaluation.held_out import EvaluationOptions

    with pytest.raises(UserError, match="--path-precision must be one of auto, fp32, bf16"):
        EvaluationOptions(checkpoint="", path_precision="fp16").check()
    with pytest.raises(UserError, match="--path-shortlist must not be negative"):
        EvaluationOptions(checkpoint="", path_shortlist=-1).check()
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    status, _, err = invoke("--checkpoint", run, "--path-precision", "fp16")
    assert status == 2 and "invalid choice: 'fp16'" in err
    status, _, err = invoke("--checkpoint", run, "--path-shortlist", "-1")
    assert status == 2 and "--path-shortlist must not be negative" in err and "Traceback" not in err
    status, out, err = invoke("--checkpoint", run, *FAST, "--anneal-steps", "3", "--fppl-samples", "0",
                              "--path-precision", "fp32", "--path-shortlist", "0", "--json")
    assert status == 0, err
    isd = json.loads(out)["importance_sampling"]
    assert isd["path_precision"] == "fp32" and isd["path_shortlist"] == 0


def test_the_trust_warnings_name_the_remedy_of_the_estimator_in_use():
    from textebm.evaluation.held_out import DrawsCheck, HalfSchedule, trust
    from textebm.inference.likelihood import ISResult

    log_w = torch.tensor([[-30.0] + [-10.0] * 9, [-30.0] + [-12.0] * 9])  # one poor first draw, nine good
    log_px = torch.logsumexp(log_w.double(), 1) - __import__("math").log(10)
    res = ISResult(log_px.float(), torch.full((2,), 9.0), log_w, torch.zeros(2, 1), torch.ones(2, 1), 1)
    plain, annealed = trust(res, 10)["warnings"], trust(res, 10, annealed=True)["warnings"]
    assert len(plain) == 1 and "not converged" in plain[0] and plain[0].endswith("raise --num-is-samples")
    assert annealed == []  # AIS chains: the tenth is reported, the schedule is the check
    half = HalfSchedule(sentences=2, steps=10, full_steps=20, nll_full=40.0, nll_half=41.0, stderr=0.1)
    moved = trust(res, 10, annealed=True, half=half)
    assert moved["half_schedule"]["nll_change_from_half"] == -1.0
    assert any("from 10 to 20 temperatures" in w and "raise --anneal-steps" in w for w in moved["warnings"])
    steady = trust(res, 10, annealed=True, half=HalfSchedule(2, 10, 20, 40.0, 40.1, 0.01))
    assert not any("temperatures" in w for w in steady["warnings"])
    noisy = trust(res, 10, annealed=True, half=HalfSchedule(2, 10, 20, 40.0, 41.0, 0.5))  # within 3 s.e.
    assert not any("temperatures" in w for w in noisy["warnings"])
    more = trust(res, 10, annealed=True, draws=DrawsCheck(2, 2, 8, nll_default=41.0, nll_more=40.5, stderr=0.1))
    assert more["draws_check"]["nll_change_with_more"] == -0.5
    assert any("from 2 to 8 AIS chains" in w and "raise --num-is-samples" in w for w in more["warnings"])
    close = trust(res, 10, annealed=True, draws=DrawsCheck(2, 2, 8, nll_default=41.0, nll_more=40.9, stderr=0.01))
    assert not any("AIS chains" in w for w in close["warnings"])


def test_the_draws_check_compares_runs_of_the_estimator_with_all_their_chains_pooled():
    from textebm.evaluation.held_out import draws_check
    from textebm.inference.likelihood import jackknife_log_mean_exp

    # two sentences, 3 runs of 2 chains each: in every run one chain is far heavier than the other
    log_w = torch.tensor([[0.0, -6.0, -1.0, -5.0, -0.5, -7.0], [-3.0, -3.5, -2.0, -9.0, -4.0, -4.2]],
                         dtype=torch.float64)
    check = draws_check(log_w, 2)
    runs = [[float(jackknife_log_mean_exp(row[i:i + 2])) for i in (0, 2, 4)] for row in log_w]
    default = -sum(sum(r) / 3 for r in runs) / 2
    pooled = -float(jackknife_log_mean_exp(log_w).mean())
    assert (check.sentences, check.chains, check.more_chains) == (2, 2, 6)
    assert check.nll_default == pytest.approx(default) and check.nll_more == pytest.approx(pooled)
    assert check.nll_more != pytest.approx(check.nll_default, abs=1e-3)  # the pool is not the runs' mean
    per_sentence = [-float(jackknife_log_mean_exp(row)) + sum(r) / 3 for row, r in zip(log_w, runs)]
    spread = abs(per_sentence[0] - per_sentence[1]) / 2  # the standard error of a mean of two
    assert check.stderr == pytest.approx(spread)


def test_a_report_made_with_other_options_is_kept_not_replaced(invoke, tmp_path, corpus_folder, train_lines):
    # a 2-sentence smoke test replaced a long report without a word, its figure left beside the new one
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    status, _, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "20", "--temperatures", "1")
    assert status == 0, err
    long_report = json.loads((run / "evaluation-test.json").read_text())
    assert long_report["options"]["max_sentences"] == 12 and "checkpoint" not in long_report["options"]
    smoke = [*FAST, "--max-sentences", "2", "--fppl-samples", "0"]
    status, _, err = invoke("--checkpoint", run, *smoke)
    assert status == 0, err
    (kept,) = run.glob("evaluation-test.earlier-*.json")
    assert err.strip().splitlines()[-1] == f"the earlier evaluation-test.json was made with other options: kept as " \
                                           f"{kept}"
    earlier = json.loads(kept.read_text())
    figure = earlier.pop("figure")
    assert earlier == {k: v for k, v in long_report.items() if k != "figure"}
    assert figure == str(run / (kept.stem.replace("evaluation", "quality_diversity") + ".png"))
    assert [p.name for p in run.glob("*.png")] == [Path(figure).name]
    assert not (run / "quality_diversity-test.png").exists()  # the new report has no figure: none stands beside it
    assert json.loads((run / "evaluation-test.json").read_text())["num_sentences"] == 2
    # the same options again: the report is redone in place (as `reproduce` redoes an evaluation)
    status, _, err = invoke("--checkpoint", run, *smoke)
    assert status == 0 and "kept as" not in err
    assert len(list(run.glob("evaluation-test.*.json"))) == 1
    # so is one written before 2026-12-08, which recorded the protocol's options though none was asked for
    path = run / "evaluation-test.json"
    report = json.loads(path.read_text())
    report["options"]["protocol"] = {"wkl": False, "neural_rppl": False, "epochs": 2, "keep": None}
    path.write_text(json.dumps(report))
    status, _, err = invoke("--checkpoint", run, *smoke)
    assert status == 0 and "kept as" not in err and len(list(run.glob("evaluation-test.*.json"))) == 1, err


def test_out_writes_the_report_elsewhere_and_leaves_the_runs_own(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300], prior="gaussian")
    status, _, err = invoke("--checkpoint", run, *FAST, "--max-sentences", "2", "--fppl-samples", "0")
    assert status == 0, err
    own = (run / "evaluation-test.json").read_bytes()
    out = tmp_path / "smoke" / "report.json"
    status, printed, err = invoke("--checkpoint", run, *FAST, "--max-sentences", "3", "--fppl-samples", "10",
                                  "--temperatures", "1", "--json", "--out", out)
    assert status == 0, err
    report = json.loads(out.read_text())
    assert report == json.loads(printed) and report["num_sentences"] == 3
    assert report["figure"] == str(out.with_suffix(".png")) and out.with_suffix(".png").is_file()
    assert (run / "evaluation-test.json").read_bytes() == own and "kept as" not in err
    assert sorted(p.name for p in run.glob("evaluation-*")) == ["evaluation-test.json"]
    assert not list(run.glob("*.png"))
    # an interrupted --out evaluation keeps its stages beside its report, not in the run's own file
    partial = run / "evaluation-test.partial.pt"
    partial.write_bytes(b"the run's own interrupted evaluation")
    status, _, err = invoke("--checkpoint", run, *FAST, "--max-sentences", "3", "--fppl-samples", "0", "--out", out)
    assert status == 0 and "not resuming" not in err, err
    assert partial.read_bytes() == b"the run's own interrupted evaluation"
    assert not out.with_suffix(".partial.pt").exists()  # finished: nothing left beside the report
    # --out naming the run's own report is the run's own report: one made with other options is kept aside
    status, _, err = invoke("--checkpoint", run, *FAST, "--max-sentences", "3", "--fppl-samples", "0", "--out",
                            run / "evaluation-test.json")
    assert status == 0 and "kept as" in err, err
    _one_line(*invoke("--checkpoint", run, *FAST, "--out", tmp_path / "figure.png")[::2], "name the JSON report")
    (tmp_path / "taken").mkdir()
    _one_line(*invoke("--checkpoint", run, *FAST, "--out", tmp_path / "taken")[::2], "taken: it is a folder")


def test_not_a_run(invoke, tmp_path):
    _one_line(*invoke("--checkpoint", tmp_path, "--fppl-samples", "0")[::2], "not a textebm run")


def test_a_report_that_cannot_be_written_exits_2_before_the_work(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    (run / "evaluation-test.json").mkdir()
    _one_line(*invoke("--checkpoint", run, *FAST, "--fppl-samples", "0")[::2],
              f"cannot write {run / 'evaluation-test.json'}: it is a folder")
    assert not (run / "evaluation-test.partial.pt").exists()  # no stage was computed


def test_missing_split(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    _one_line(*invoke("--checkpoint", run, "--split", "valid", *FAST)[::2], "no valid split")
    assert not (run / "evaluation-valid.json").exists()


def test_user_file_corpus_is_evaluated_on_its_held_out_lines_as_valid(invoke, tmp_path, small_corpus, train_lines):
    # `--split valid` said "no valid split": the 5% a single file holds out could never be evaluated
    run = _make_run(tmp_path / "run", small_corpus, train_lines[:300])
    _one_line(*invoke("--checkpoint", run, *FAST)[::2], "no test split", "is --split valid")
    status, out, err = invoke("--checkpoint", run, "--split", "valid", *FAST, "--fppl-samples", "0")
    assert status == 0, err
    report = json.loads((run / "evaluation-valid.json").read_text())
    assert report["split"] == "valid" and report["evaluated_text"] == "last 20 lines of train (held out)"
    assert report["num_sentences"] == 12 and "last 20 lines of train (held out)" in out


def _stop_at_the_third_chunk(monkeypatch):
    """Ctrl-C at the third chunk of importance sampling (after log Z and two chunks): the list the calls are
    counted in, and the real function."""
    import textebm.inference.likelihood as likelihood

    real, chunks = likelihood.importance_sampled_log_likelihood, []

    def stopping(*a, **k):
        chunks.append(1)
        if len(chunks) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(likelihood, "importance_sampled_log_likelihood", stopping)
    return chunks, real


def test_an_interrupted_evaluation_resumes_where_it_stopped_with_the_same_numbers(invoke, tmp_path, corpus_folder,
                                                                                  train_lines, monkeypatch):
    import textebm.inference.likelihood as likelihood

    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    args = ["--checkpoint", run, *FAST, "--chunk", "4", "--fppl-samples", "0", "--json"]
    status, out, err = invoke(*args)
    assert status == 0, err
    whole = json.loads(out)
    partial = run / "evaluation-test.partial.pt"
    assert not partial.exists()  # a finished evaluation leaves nothing to resume

    chunks, real = _stop_at_the_third_chunk(monkeypatch)
    status, _, err = invoke(*args)
    assert status == 130 and partial.is_file(), err  # Ctrl-C after log Z and two chunks of the three
    chunks.clear()
    monkeypatch.setattr(likelihood, "importance_sampled_log_likelihood",
                        lambda *a, **k: chunks.append(1) or real(*a, **k))
    status, out, err = invoke(*args, "--progress")
    assert status == 0, err
    assert "resuming an interrupted evaluation" in err and "2 chunk(s) of importance sampling" in err
    assert len(chunks) == 1 + 3 + 3  # the one chunk left, then the two checks' 12 sentences in 3 chunks each
    resumed = json.loads(out)
    for key in ("nll_per_sentence", "elbo_per_sentence", "log_partition", "importance_sampling", "latent_usage",
                "prior_chain_bias"):
        assert resumed[key] == whole[key], key
    assert not partial.exists()


def test_a_saved_evaluation_that_cannot_be_resumed_is_said_to_be_replaced(invoke, tmp_path, corpus_folder,
                                                                         train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300], prior="gaussian")
    (run / "evaluation-test.partial.pt").write_bytes(b"cut short by a full disk")
    status, _, err = invoke("--checkpoint", run, *FAST, "--max-sentences", "2", "--fppl-samples", "0")
    assert status == 0, err
    assert f"not resuming from {run / 'evaluation-test.partial.pt'}: it is unreadable (" in err
    assert "starting afresh" in err


@pytest.mark.parametrize("flag, value", [("--num-chains", "0"), ("--num-is-samples", "0"),
                                         ("--partition-samples", "1"), ("--max-sentences", "0"),
                                         ("--temperatures", "0"), ("--anneal-steps", "-1"), ("--max-rows", "0"),
                                         ("--curvature-directions", "0"), ("--posterior-steps", "-1"),
                                         # past the bounds: 9.6 GB in 20 s without a word, or hours
                                         ("--num-chains", "100000000"), ("--partition-samples", str(10**12)),
                                         ("--fppl-samples", str(10**9)), ("--ais-steps", str(10**12)),
                                         ("--num-is-samples", str(10**9)), ("--anneal-steps", str(10**12))])
def test_bad_counts(invoke, tmp_path, corpus_folder, train_lines, flag, value):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    _one_line(*invoke("--checkpoint", run, flag, value)[::2], flag)


# --- wKL and the neural reverse perplexity of generated sentences ------------------------------------

PROTOCOL = ["--wkl", "--neural-rppl", "--synthetic-train", "48", "--synthetic-valid", "16", "--rppl-epochs", "1",
            "--rppl-set", "embedding_dim=8", "--rppl-set", "hidden_dim=16", "--rppl-set", "batch_size=16"]


def test_wkl_and_neural_rppl_of_generated_sentences(invoke, tmp_path, corpus_folder, train_lines):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    status, out, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "0", *PROTOCOL,
                              "--synthetic-temperature", "0.8", "--json")
    assert status == 0, err
    report = json.loads(out)
    generated = report["protocol"]["generated"]
    assert generated["n"] == 64 and generated["temperature"] == 0.8 and generated["seed"] == 0
    assert report["wkl"]["sentences"] == 48 and report["wkl"]["generated_tokens"] > 0
    rppl = report["neural_reverse_ppl"]
    assert rppl["train_sentences"] == 48 and rppl["valid_sentences"] == 16 and rppl["steps"] == 3
    assert rppl["test_sentences"] == 40 and rppl["ppl"] > 1  # the corpus's 40 held-out lines
    assert report == json.loads((run / "evaluation-test.json").read_text())
    status, table, err = invoke("--checkpoint", run, *FAST, "--fppl-samples", "0", *PROTOCOL)
    assert status == 0, err
    assert "wKL vs real train (48 sentences" in table and "neural rPPL (real test | LSTM LM of 48 + 16" in table


@pytest.mark.parametrize("args,fragment", [
    (["--neural-rppl", "--synthetic-valid", "0"], "--synthetic-valid must be from 1 to 10,000,000"),
    (["--wkl", "--synthetic-train", str(10**12)], "--synthetic-train must be from 1 to 10,000,000"),
    (["--wkl", "--synthetic-temperature", "0"], "--synthetic-temperature"),
    (["--neural-rppl", "--rppl-minutes", "0"], "--rppl-minutes"),
    (["--neural-rppl", "--rppl-preset", "nope"], "unknown preset"),
])
def test_protocol_bad_options(invoke, tmp_path, corpus_folder, train_lines, one_line_error, args, fragment):
    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    status, out, err = invoke("--checkpoint", run, *FAST, *args)
    one_line_error(status, err, "evaluate", fragment)
    assert out == ""


def test_protocol_options_count_only_when_the_protocol_is_asked_for():
    # --rppl-epochs without --wkl or --neural-rppl changes no number, yet moved the report aside as "made
    # with other options" and discarded a resumable interruption
    from textebm.evaluation.held_out import EvaluationOptions, report_options
    from textebm.evaluation.protocol_metrics import ProtocolOptions

    plain = report_options(EvaluationOptions(checkpoint="run"))
    unused = report_options(EvaluationOptions(checkpoint="run", protocol=ProtocolOptions(epochs=3, keep="/tmp/lm")))
    assert plain == unused and plain["protocol"] is None
    asked = report_options(EvaluationOptions(checkpoint="run", protocol=ProtocolOptions(wkl=True, epochs=3,
                                                                                          keep="/tmp/lm")))
    assert asked["protocol"]["epochs"] == 3 and "keep" not in asked["protocol"]


@pytest.mark.parametrize("change", ["held-out lines", "weights"])
def test_an_interrupted_evaluation_of_other_lines_or_weights_starts_afresh(invoke, tmp_path, corpus_folder,
                                                                           train_lines, monkeypatch, change):
    # resumed, the old text's chunks were reported as the new text's (NLL 42.07 against 66.61 fresh), and a
    # run retrained at the same path and step reused the old model's log Z
    import textebm.inference.likelihood as likelihood

    run = _make_run(tmp_path / "run", corpus_folder, train_lines[:300])
    args = ["--checkpoint", run, *FAST, "--chunk", "4", "--fppl-samples", "0", "--json"]
    _, real = _stop_at_the_third_chunk(monkeypatch)
    assert invoke(*args)[0] == 130 and (run / "evaluation-test.partial.pt").is_file()
    monkeypatch.setattr(likelihood, "importance_sampled_log_likelihood", real)
    if change == "held-out lines":
        test = corpus_folder / "test.txt"
        test.write_text("".join(reversed(test.read_text(encoding="utf-8").splitlines(keepends=True))),
                        encoding="utf-8")
    else:
        torch.manual_seed(1)  # retrained: other weights at the same path and step
        save_checkpoint(run, build_model(Config.from_dict(json.loads((run / "config.json").read_text())),
                                         WordVocab.build(train_lines[:300])), {}, step=7)
    status, out, err = invoke(*args, "--progress")
    assert status == 0 and "not resuming from" in err and "resuming an interrupted" not in err, err
    fresh = json.loads(invoke(*args)[1])
    assert json.loads(out)["nll_per_sentence"] == fresh["nll_per_sentence"]
