"""Generated text judged against real text, as an evaluation reports it: the decoding sweep (greedy and
each temperature) with FPPL/RPPL and sample statistics under KenLM 5-grams (lm_eval), and the sentences
behind wKL and the neural reverse perplexity (protocol_metrics)."""

from __future__ import annotations

import time

from textebm.errors import UserError
from textebm.evaluation.protocol_metrics import ProtocolOptions
from textebm.progress import QUIET, Progress

TEMPERATURES = (0.5, 0.7, 0.85, 1.0)


def import_lm_eval():
    """Import lm_eval and make sure it is this project's package, not a namesake."""
    try:
        import lm_eval
    except ImportError as err:
        raise UserError(f"cannot import lm_eval ({err}); reinstall textebm with ./setup.sh") from None
    if not getattr(lm_eval, "__textebm__", False):
        if getattr(lm_eval, "__file__", None) is None:  # a namespace package: no __init__.py ran
            where = ", ".join(str(p) for p in getattr(lm_eval, "__path__", []))
            raise UserError(
                f"`lm_eval` was imported as a bare namespace package from {where}, not textebm's "
                "package; reinstall textebm (./setup.sh, or pip install -e .)"
            )
        where = lm_eval.__file__
        raise UserError(
            f"`lm_eval` resolves to another package ({where}), e.g. EleutherAI's "
            "lm-evaluation-harness; it and textebm cannot share one environment: use a separate venv"
        )
    return lm_eval


def decodings(temperatures) -> list:
    """The decoding sweep: greedy, then ancestral sampling at each temperature (`textebm sample`'s code)."""
    from textebm.generation.sampling import SamplingOptions

    return [("greedy", SamplingOptions(greedy=True))] + [
        (f"temperature {t:g}", SamplingOptions(temperature=t)) for t in temperatures]


EMPTY_SET_FIGURES = ("forward_ppl", "reverse_ppl", "unique_share", "distinct_1", "distinct_2", "self_bleu")


def generation_metrics(loaded, train_lines: list[str], test_lines: list[str], n: int, seed: int,
                       temperatures=TEMPERATURES, progress: Progress = QUIET) -> dict:
    """FPPL/RPPL and sample statistics of `n` sentences from the run per decoding (greedy and each
    temperature), all against one load of the real-data LM (lm_eval, KenLM 5-grams, estimated on the
    lines the run trained on and cached by their content; the reverse LMs are scored on the held-out
    lines). The reference row of real text with this evaluator (compare models to it, not to other
    evaluators' numbers): FPPL of the held-out text (`real_lm_test_ppl`), and RPPL and sample
    statistics of `n` random training lines (`real_reference`; their FPPL would be in-sample)."""
    import random

    from textebm.generation.sampling import generate_text

    lm_eval = import_lm_eval()
    sweep = decodings(temperatures)
    sets, examples = {}, {}
    with progress.bar("decoding sweep", len(sweep) * n, "sentence") as bar:
        for name, options in sweep:
            sentences = generate_text(loaded.model, loaded.vocab, n, options, seed)
            sets[name] = lm_eval.normalize_lines(sentences, "samples")
            examples[name] = sentences[:5]
            bar.update(n)
    real = random.Random(seed).sample(train_lines, min(n, len(train_lines)))
    sets["real"] = lm_eval.normalize_lines(real, "real")
    # A decoding whose every sentence is empty (a model that ends each sentence at once) has no perplexity;
    # it gets a row that says so rather than costing the whole evaluation.
    empty = {name for name, samples in sets.items() if not samples.sentences and name != "real"}
    scored = {name: samples for name, samples in sets.items() if name not in empty}
    progress.note(f"KenLM: {len(scored)} sets of samples against the 5-gram of {len(train_lines)} training lines")
    try:
        out = lm_eval.evaluate_sample_sets(scored, lm_eval.normalize_lines(train_lines, "training"),
                                           lm_eval.normalize_lines(test_lines, "test"))
    except lm_eval.EvalError as err:
        raise UserError(f"FPPL/RPPL: {err} (use --fppl-samples 0 to skip)") from None
    reference = out["sets"].pop("real")
    rows = []
    for name, options in sweep:
        figures = out["sets"][name] if name not in empty else {
            **dict.fromkeys(EMPTY_SET_FIGURES), "num_samples": 0, "blank_lines": n,
            "note": f"all {n} sentences were empty: no perplexity"}
        rows.append({"decoding": name, "greedy": options.greedy,
                     "temperature": None if options.greedy else options.temperature,
                     **figures, "examples": examples[name]})
    return {
        "real_lm_test_ppl": out["real"]["test_ppl"],
        "real_lm": {key: out["real"][key] for key in ("path", "cached", "num_sentences", "discount_fallback")},
        "real_reference": {"sentences": f"{len(real)} random lines of the training text (seed {seed})",
                           **{key: reference[key] for key in ("num_samples", "reverse_ppl", "unique_share",
                                                                "distinct_1", "distinct_2", "self_bleu")}},
        "n": n, "seed": seed, "max_length": sweep[0][1].max_length, "prior_steps": loaded.config.prior_steps,
        "precision": loaded.model.decoding_precision,
        "order": out["order"], "count_eos": out["count_eos"],
        "decodings": rows,
    }


def samples_from(config) -> str:
    """Which distribution generated sentences come from, said plainly in every report."""
    if config.prior != "ebm":
        return "z drawn exactly from the Gaussian prior N(0, sigma^2 I), then decoded"
    return (f"z from the short-run prior chain ({config.prior_steps} unadjusted Langevin steps of "
            f"{config.prior_step_size:g}, noise scale {config.prior_noise:g}, from N(0, sigma^2 I)): the chain's own "
            "law, which prior_chain_bias compares with the EBM's; the NLL is that of the EBM density itself")


def protocol_section(loaded, train_lines: list[str], held_out: list[str], protocol: ProtocolOptions, seed: int,
                     progress: Progress = QUIET) -> dict:
    """wKL and/or the neural reverse perplexity (textebm/evaluation/protocol_metrics.py) of sentences the run
    generates for them: `protocol.needed` sentences by ancestral sampling at `protocol.temperature`
    (up to 40 tokens), the stream `textebm sample --seed SEED` gives; wKL against the lines the run
    trained on, the reverse LM scored on the held-out lines."""
    from textebm.evaluation.protocol_metrics import protocol_metrics
    from textebm.generation.sampling import SamplingOptions, generate_text

    options = SamplingOptions(temperature=protocol.temperature)
    model, n = loaded.model, protocol.needed
    started = time.perf_counter()
    with progress.bar("generating for wKL / neural rPPL", n, "sentence") as bar:
        sentences = generate_text(model, loaded.vocab, n, options, seed, on_batch=bar.update)
    seconds = round(time.perf_counter() - started, 2)
    out = protocol_metrics(sentences, train_lines, held_out, protocol, model.device, loaded.config.corpus, progress)
    out["protocol"]["generated"] = {"n": n, "seed": seed, "temperature": protocol.temperature,
                                    "max_length": options.max_length, "samples_from": samples_from(loaded.config),
                                    "empty_sentences": sum(1 for s in sentences if not s.split()), "seconds": seconds}
    return out
