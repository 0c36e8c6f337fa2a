"""One evaluation of a trained run on a held-out split, as `textebm evaluate` and `textebm reproduce`
both run it: its options, NLL and perplexity by importance sampling, how far to trust them, latent
usage, and (textebm.evaluation.decoding_sweep) FPPL/RPPL of generated text; the report on disk is
textebm.evaluation.reports.

The estimators are described in textebm/inference/likelihood.py, textebm/inference/diagnostics.py and
docs/evaluate-command.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from textebm.config import MAX_CHAIN_STEPS, MAX_CHAINS, MAX_SAMPLES
from textebm.errors import UserError
from textebm.evaluation.decoding_sweep import TEMPERATURES, generation_metrics, protocol_section, samples_from
from textebm.evaluation.protocol_metrics import ProtocolOptions
from textebm.progress import QUIET, Progress

USAGE_AU_SENTENCES = 256
PPL_CONVENTION = ("exp(sum of per-sentence NLL / number of predicted tokens); tokens = words after encoding "
                  "with the run's vocabulary (unknown words as <unk>, lines cut to the run's max_length) plus "
                  "one end-of-sentence per sentence")


# The estimator's version: `textebm reproduce` evaluates again what an older one evaluated. Raise it
# whenever a change to the estimators changes what an evaluation reports.
EVALUATOR_VERSION = 12
PATH_PRECISIONS = ("auto", "fp32", "bf16")  # --path-precision
AIS_CHAINS = 8  # the default draws per sentence with --anneal-steps > 0 (docs/evaluate-command.md, evaluator 12:
# the error left falls as 1/sqrt(chains), and the shortlist path makes eight cheaper than the bound) ...
IS_DRAWS = 100  # ... and with --anneal-steps 0 (plain importance sampling from the Laplace proposal) or for a VAE
PLACE_KEYS = ("checkpoint", "data_dir", "device", "threads")  # where and how an evaluation runs, not what it is


@dataclass
class EvaluationOptions:
    """What `textebm evaluate` takes (its flags, same names); every default is the command's."""

    checkpoint: str
    split: str = "test"
    data_dir: str | None = None
    max_sentences: int | None = None  # importance-sample the first N held-out sentences (FPPL/RPPL use all)
    num_chains: int = 3  # tempered posterior chains per sentence; AIS starts from the mixture of their ends' Laplace
    # Gaussians (with --anneal-steps 0 the best end's Laplace proposal)
    posterior_steps: int | None = None  # None: the run's K1
    num_is_samples: int | None = None  # draws per sentence (AIS chains when annealing); None: the mode's default
    anneal_steps: int = 60  # each draw annealed from the Laplace mixture to p(z|x) through this many temperatures
    curvature_directions: int | None = 8  # ends but the best re-measure its Hessian along k directions (None, or
    # k >= the latent size: each end its own Hessian). Evaluator 8's defaults, chosen by bench.curvature_check
    # (docs/evaluate-command.md): less error than evaluator 7's 2 x 80 with every end's own Hessian, at 0.8 its CPU;
    # evaluator 9 keeps them and anneals in equal steps of beta (annealing.BETA_SCHEDULES)
    path_precision: str = "auto"  # the decoder's projection at the AIS temperatures below 1 (annealing.anneal)
    # and, from evaluator 11, in the tempered chains and wherever the fit only ranks or weighs: auto is bf16
    # where the device does it natively (evaluator 10), fp32 elsewhere; beta = 1 and the Hessians are always fp32
    path_shortlist: int = 128  # below beta = 1 the likelihood on each sentence's shortlist of this many words per
    # position and a pseudo-word for the rest (inference/shortlist.py; evaluator 12); 0: the whole vocabulary
    partition_samples: int = 100_000  # plain Monte Carlo draws of log Z: the cross-check of AIS
    ais_chains: int = 1000  # annealed importance sampling of log Z: chains ...
    ais_steps: int = 2000  # ... and temperatures (checked against half as many)
    fppl_samples: int = 1000  # 0: no decoding sweep
    temperatures: list[float] = field(default_factory=lambda: list(TEMPERATURES))
    chunk: int = 32
    max_rows: int | None = None  # decoder rows decoded together; None: Decoder.rows_per_chunk (logits within 1 GiB)
    seed: int = 0
    chain: list[str] = field(default_factory=list)  # `key=value` chain settings for evaluation only
    precision: str = "fp32"
    device: str = "auto"
    threads: int | None = None
    protocol: ProtocolOptions = field(default_factory=ProtocolOptions)  # wKL, neural rPPL (protocol_section)

    def check(self) -> EvaluationOptions:
        """Validate, and resolve the number of draws (AIS_CHAINS when annealing, else IS_DRAWS; a VAE, whose
        draws are never annealed, gets IS_DRAWS once its run is loaded: `draws_for`)."""
        self.default_draws = self.num_is_samples is None  # not a field: no part of what a report depends on
        if self.num_is_samples is None:
            self.num_is_samples = AIS_CHAINS if self.anneal_steps else IS_DRAWS
        for name, low in (("num_chains", 1), ("num_is_samples", 1), ("partition_samples", 2), ("fppl_samples", 0),
                          ("chunk", 1), ("ais_chains", 2), ("ais_steps", 2)):
            if getattr(self, name) < low:
                raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(self, name)}")
        if self.anneal_steps < 0:
            raise UserError(f"--anneal-steps must not be negative, not {self.anneal_steps}")
        if self.path_precision not in PATH_PRECISIONS:
            raise UserError(f"--path-precision must be one of {', '.join(PATH_PRECISIONS)}, not "
                            f"{self.path_precision!r}")
        if self.path_shortlist < 0:
            raise UserError(f"--path-shortlist must not be negative (0: the whole vocabulary), not "
                            f"{self.path_shortlist}")
        if self.curvature_directions is not None and self.curvature_directions < 1:
            raise UserError(f"--curvature-directions must be at least 1, not {self.curvature_directions}")
        if self.posterior_steps is not None and self.posterior_steps < 0:
            raise UserError(f"--posterior-steps must not be negative, not {self.posterior_steps}")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"--max-rows must be at least 1, not {self.max_rows}")
        if not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            raise UserError(f"--temperatures must be positive numbers, not {' '.join(map(str, self.temperatures))}")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise UserError(f"--max-sentences must be at least 1, not {self.max_sentences}")
        bounds = {"num_chains": MAX_CHAINS, "num_is_samples": MAX_CHAINS, "ais_chains": MAX_CHAINS,
                  "curvature_directions": MAX_CHAINS, "posterior_steps": MAX_CHAIN_STEPS,
                  "anneal_steps": MAX_CHAIN_STEPS, "ais_steps": MAX_CHAIN_STEPS, "fppl_samples": MAX_SAMPLES,
                  "partition_samples": MAX_SAMPLES}  # past these: hours without a word, or out of memory
        for name, most in bounds.items():
            if (value := getattr(self, name)) is not None and value > most:
                raise UserError(f"--{name.replace('_', '-')} goes up to {most:,}, not {value}")
        self.protocol.check()
        return self

    def annealed(self, config) -> bool:
        """Whether the draws are AIS chains: --anneal-steps > 0 for a model without its own q(z|x)."""
        return bool(self.anneal_steps) and config.model != "vae"

    def draws_for(self, config) -> None:
        """The run's default number of draws, once its config is known: IS_DRAWS where they are not annealed."""
        if getattr(self, "default_draws", False) and not self.annealed(config):
            self.num_is_samples = IS_DRAWS


def work_summary(options: EvaluationOptions, model, config, num_sentences: int, num_train_lines: int) -> str:
    """How much work an evaluation is, said before it starts."""
    if model.has_latent:
        steps = config.posterior_steps if options.posterior_steps is None else options.posterior_steps
        proposal = (f"Laplace Gaussians at {options.num_chains} tempered chain end(s) x {steps} steps, "
                    if config.model != "vae"
                    else "the encoder's q(z|x) as the proposal, ")
        draws = (f"{options.num_is_samples} AIS chains x {options.anneal_steps} temperatures each"
                 if options.annealed(config)
                 else f"{options.num_is_samples} importance samples each")
        parts = [f"{num_sentences} sentences x {proposal}{draws}",
                 f"latent usage of the same sentences (active units: the first "
                 f"{min(num_sentences, USAGE_AU_SENTENCES)})"]
        if model.prior.is_ebm:
            parts.insert(0, f"log Z by AIS ({options.ais_chains} chains x {options.ais_steps} + "
                            f"{options.ais_steps // 2} temperatures) and {options.partition_samples} plain draws")
    else:
        parts = [f"{num_sentences} sentences, exact likelihood (no latent)"]
    if options.fppl_samples:
        parts.append(f"FPPL/RPPL: {len(options.temperatures) + 1} decodings x {options.fppl_samples} sentences, "
                     f"KenLM 5-grams of {num_train_lines} training lines")
    return "evaluate: " + "; ".join(parts)


def evaluate(options: EvaluationOptions, progress: Progress = QUIET, tf32: bool = True,
             resume_file: Path | None = None) -> dict:
    """Everything `textebm evaluate` reports, as one JSON-ready dict (without the figure). `tf32`: on CUDA,
    TF32 matrix products (`textebm.devices.set_tf32`), a setting of the machine rather than of the report.
    `resume_file` (e.g. RUN/evaluation-<split>.partial.pt): keep the finished stages there and start from
    them (`textebm.evaluation.partial_evaluation`). A caller's `torch.inference_mode()` is lifted: every
    tensor made under it would refuse the chains' autograd."""
    import torch

    with torch.inference_mode(False):
        return _evaluate(options, progress, tf32, resume_file)


def _evaluate(options: EvaluationOptions, progress: Progress, tf32: bool, resume_file: Path | None) -> dict:
    import torch

    from textebm.config import CHAIN_KEYS
    from textebm.data.batches import encode_lines
    from textebm.data.corpora import evaluation_splits, open_run_corpus
    from textebm.devices import decoding_precision_warning, resolve_chain_precision, resolve_device
    from textebm.evaluation.paired import PER_SENTENCE_KEY, paired_difference
    from textebm.evaluation.partial_evaluation import PartialEvaluation, parts_from_data, parts_to_data
    from textebm.generation.reconstruction import reconstruct
    from textebm.inference.annealing import LAPLACE_SCHEDULE
    from textebm.inference.diagnostics import (
        AU_STDERRS,
        AU_THRESHOLD,
        PRIOR_DRAWS,
        latent_usage,
        posterior_information,
        prior_chain_bias,
    )
    from textebm.inference.likelihood import evaluate_sentences, partition_function
    from textebm.model.checkpoints import weights_identity
    from textebm.model.runs import load_run

    options.check()
    started, cpu_started = time.perf_counter(), time.process_time()
    device = resolve_device(options.device, options.threads, tf32)
    loaded = load_run(options.checkpoint, device, options.chain, options.precision)
    config = loaded.config
    options.draws_for(config)
    corpus, corpus_warnings = open_run_corpus(options.checkpoint, config.corpus, options.data_dir)
    train_lines, held_out, source = evaluation_splits(corpus, config.train_split, options.split)
    lines = held_out if options.max_sentences is None else held_out[:options.max_sentences]  # for the NLL only
    encoded = encode_lines(lines, loaded.vocab, config.max_length)
    # The sentences actually scored, and their predicted tokens (after any --max-sentences cut).
    num_tokens = sum(len(s) - 1 for s in encoded.sentences)
    model = loaded.model
    progress.note(work_summary(options, model, config, len(encoded.sentences), len(train_lines)))

    generator = torch.Generator(device=device).manual_seed(options.seed)
    # What must match for a saved stage to be reused: the options, the very weights (a run retrained at the same
    # path and step is another model), the very sentences (a held-out file edited since), the device type (its
    # generator's state, its numbers) and the evaluator.
    key = {"options": {**{k: v for k, v in options_record(options).items() if k != "threads"},
                       "checkpoint": str(Path(options.checkpoint).resolve())},
           "step": loaded.step, "evaluator": EVALUATOR_VERSION, "weights": weights_identity(options.checkpoint),
           "sentences": text_digest(lines), "device": device.type, "tf32": tf32 and device.type == "cuda"}
    partial = PartialEvaluation(resume_file, key)
    if partial.restore(generator):
        progress.note(f"resuming an interrupted evaluation ({partial.path.name}): {partial.summary()}")
    elif partial.discarded:  # said even without --progress: work that was saved is about to be replaced
        print(f"not resuming from {partial.path}: {partial.discarded}; starting afresh", file=sys.stderr)
    if "log_z" in partial.stages:
        partition, bias = partial.stages["log_z"]["partition"], partial.stages["log_z"]["bias"]
    else:
        if model.prior.is_ebm:
            progress.note("log Z by annealed importance sampling")
        partition, ais = partition_function(model.prior, options.ais_chains, options.ais_steps,
                                            options.partition_samples, generator)
        bias = prior_chain_bias(model, options.ais_chains, ais, generator=generator)
        partial.save("log_z", {"partition": partition, "bias": bias}, generator)
    log_z = partition["log_z"]
    path_projection = resolve_chain_precision(options.path_precision, device)

    def estimate(sentences, num_samples: int, anneal_steps: int, stage: str, **extra):
        """`evaluate_sentences` with this evaluation's options, saved as `stage` after each chunk (and
        resumed from what it saved)."""
        return evaluate_sentences(model, sentences, loaded.vocab.pad_id, log_z, options.num_chains, num_samples,
                                  generator, chunk=options.chunk, anneal_steps=anneal_steps, max_rows=options.max_rows,
                                  curvature_directions=options.curvature_directions, path_projection=path_projection,
                                  path_shortlist=options.path_shortlist,
                                  posterior_steps=options.posterior_steps,
                                  done=parts_from_data(partial.stages.get(stage), device),
                                  on_chunk=lambda parts: partial.save(stage, parts_to_data(parts), generator), **extra)

    with progress.bar("importance sampling" if model.has_latent else "likelihood", len(encoded.sentences),
                      "sentence") as bar:
        res = estimate(encoded.sentences, options.num_is_samples, options.anneal_steps, "importance_sampling",
                       progress=lambda done, total: bar.update(done - bar.n))
    annealed = options.annealed(config)
    half = draws = None
    if annealed and model.has_latent:  # AIS's ESS cannot tell a short schedule or too few chains: half the
        # temperatures, and four times the chains in groups of evaluate's own, can (docs/evaluate-command.md)
        n = min(len(encoded.sentences), CHECK_SENTENCES)
        progress.note(f"convergence check: AIS on half the temperatures, first {n} sentences")
        steps = max(1, options.anneal_steps // 2)
        shorter = estimate(encoded.sentences[:n], options.num_is_samples, steps, "half_schedule")
        change = paired_difference(res.log_px[:n].double().tolist(), shorter.log_px.double().tolist())
        half = HalfSchedule(n, steps, options.anneal_steps, -float(res.log_px[:n].double().mean()),
                            -float(shorter.log_px.double().mean()), change.stderr)
        more = DRAWS_CHECK_FACTOR * options.num_is_samples
        progress.note(f"convergence check: {more} AIS chains per sentence instead of {options.num_is_samples}, "
                      f"first {n} sentences")
        runs = estimate(encoded.sentences[:n], more, options.anneal_steps, "draws_check",
                        step_group=options.num_is_samples)
        draws = draws_check(runs.log_w, options.num_is_samples)
    nll = -res.log_px.double()
    usage = None
    if model.has_latent:
        progress.note(f"latent usage: {len(encoded.sentences)} sentences")
        usage = latent_usage(model, encoded.sentences, loaded.vocab.pad_id, batch_size=options.chunk,
                             generator=generator, au_sentences=USAGE_AU_SENTENCES, log_px=res.log_px,
                             rate=posterior_information(res))
    reconstruction = None
    if model.has_latent:
        progress.note(f"reconstruction: {len(encoded.sentences)} sentences, greedy from their codes")
        reconstruction = reconstruct(model, loaded.vocab, encoded.sentences, seed=options.seed,
                                     truncated=encoded.truncated).summary()
    sampling = None if not model.has_latent else trust(res, options.num_is_samples, annealed, half, draws)
    result = {
        "run": str(loaded.folder), "step": loaded.step, "corpus": corpus.name, "split": options.split,
        "evaluated_text": source, "trained_on": config.train_split,
        "corpus_files": {split: str(path) for split, path in corpus.files.items()},
        "model": config.model, "prior": config.prior, "latent_dim": model.prior.latent_dim,
        "chains": {key: getattr(config, key) for key in CHAIN_KEYS},
        "num_sentences": len(encoded.sentences), "num_tokens": num_tokens, "truncated_lines": encoded.truncated,
        "evaluated_sha256": text_digest(lines),
        "nll_per_sentence": float(nll.mean()),
        "nll_per_sentence_bound": -float(res.bound().double().mean()),
        "nll_per_token": float(nll.sum() / num_tokens),
        PER_SENTENCE_KEY: [round(v, 4) for v in res.log_px.double().tolist()],  # for paired comparisons
        "perplexity": math.exp(float(nll.sum() / num_tokens)),
        "perplexity_convention": PPL_CONVENTION,
        "elbo_per_sentence": float(res.log_w.double().mean(1).mean()),
        "log_partition": partition if not model.prior.is_ebm else {
            **partition,
            "estimator": "annealed importance sampling from N(0, sigma^2 I) to exp(f) N(0, sigma^2 I), one MALA step "
                         "per inverse temperature (sigmoid schedule), log Z = logmeanexp of the chains' log weights; "
                         "stderr by the delta method; converged: the estimate on half the schedule agrees within "
                         "0.1 nat; monte_carlo: log mean exp f over reference draws, the cross-check"},
        "prior_chain_bias": bias,
        "samples_from": samples_from(config) if model.has_latent else "the language model itself (no latent)",
        "importance_sampling": None if sampling is None else (
            vae_importance_sampling(options, sampling, res) if config.model == "vae" else {
                "estimator": ANNEALED_ESTIMATOR if options.anneal_steps else LAPLACE_ESTIMATOR,
                "proposal": "laplace", "anneal_steps": options.anneal_steps,
                "anneal_schedule": LAPLACE_SCHEDULE if options.anneal_steps else None,
                "num_chains": options.num_chains,
                "curvature_directions": options.curvature_directions, "path_precision": path_projection,
                "path_shortlist": options.path_shortlist if options.anneal_steps else None,
                "posterior_steps": (config.posterior_steps if options.posterior_steps is None
                                    else options.posterior_steps),
                "posterior_step_size": config.posterior_step_size, "num_samples": options.num_is_samples,
                **sampling, "proposal_std_mean": float(res.chain_std.mean())}),
        "latent_usage": None if usage is None else {
            "gap": usage["gap"], "nll_posterior": usage["nll_posterior"], "nll_prior": usage["nll_prior"],
            "mutual_information": usage["mutual_information"], "active_units": usage["active_units"],
            "unit_sensitivity": usage["unit_sensitivity"],
            "estimators": {
                "gap": f"mean log p(x|z+) - mean log p(x|z-) per token; z+ {posterior_code(config)}, "
                       f"z- {PRIOR_DRAWS} prior draws per sentence",
                "mutual_information": "E_x KL(p(z|x) || p(z)) = E_x[E_{z~p(z|x)} log p(x|z) - log p(x)] in nats per "
                                      "sentence: the posterior expectation under the importance weights above "
                                      "(self-normalised), log p(x) their estimate",
                "active_units": f"units whose swap for a prior draw costs > {AU_THRESHOLD} nats/sentence and > "
                                f"{AU_STDERRS:g} standard errors (first {USAGE_AU_SENTENCES} sentences)",
                "note": "gap and active units are exactly 0 for a decoder that ignores z; the mutual information is "
                        "then minus the log of the mean importance ratio, a few hundredths of a nat "
                        "(textebm/inference/diagnostics.py)"},
        },
        "reconstruction": reconstruction,
        "exact_likelihood": not model.has_latent,
        "seed": options.seed,
        "options": report_options(options),
    }
    result["warnings"] = corpus_warnings + (sampling["warnings"] if sampling else []) + partition_warnings(partition)
    if warning := decoding_precision_warning(options.precision, device):
        result["warnings"].append(warning)
    if config.model == "vae":
        result["vae"] = vae_figures(res, config, result["nll_per_sentence"], result["elbo_per_sentence"])
    if options.fppl_samples == 0:
        result["generation"] = None
        result["generation_skipped"] = "--fppl-samples 0"
    else:
        result["generation"] = generation_metrics(loaded, train_lines, held_out, options.fppl_samples, options.seed,
                                                  options.temperatures, progress)
        result["warnings"] += [f"{row['decoding']}: {row['note']}" for row in result["generation"]["decodings"]
                               if row.get("note")]
    if options.protocol.wanted:
        result.update(protocol_section(loaded, train_lines, held_out, options.protocol, options.seed, progress))
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["cpu_seconds"] = round(time.process_time() - cpu_started, 2)  # under load: the work, not the wait
    return result


LAPLACE_ESTIMATOR = (
    "log p(x) = the jackknife of logmeanexp_s [log p(x|z_s) + log p_alpha(z_s) - log q(z_s|x)], z_s ~ q (S L_S - "
    "(S-1) mean_i L_(S-1)^(-i): logmeanexp's 1/S bias removed; nll_per_sentence_bound is plain logmeanexp's); "
    "q = 0.7 N(m, S) + "
    "0.3 Student-t(m, S, nu = 5): the Laplace approximation at the mode m of log p(x, z), S the inverse of its "
    "negative Hessian (the mode found from the best end of the tempered posterior chains, then a Newton step)")
ANNEALED_ESTIMATOR = (
    "log p(x) = the jackknife of logmeanexp_s w_s (S L_S - (S-1) mean_i L_(S-1)^(-i): logmeanexp's 1/S bias "
    "removed; nll_per_sentence_bound is plain logmeanexp's) over annealed importance sampling chains "
    "(textebm.inference.annealing): each draws one component of a mixture of Laplace Gaussians N(m_k, S_k), one "
    "at each of num_chains tempered chain ends (m_k the mode of log p(x, z) a Newton step finds from the end, S_k "
    "the inverse of its negative Hessian by finite differences, or with curvature_directions k the best end's "
    "re-measured at the others along its k stiffest eigenvectors; weights half by Laplace evidence, half "
    "even), and walks from the mixture "
    "to p(z|x) through anneal_steps equally spaced temperatures, one MALA step each in the coordinates where "
    "N(m_k, S_k) is N(0, I), below the last temperature on the path_shortlist stand-in for log p(x|z) (each "
    "sentence's top path_shortlist words per position at the heaviest m_k, and one pseudo-word for the rest; 0: "
    "the whole vocabulary) in path_precision; w_s is its importance weight on the whole path (the last temperature "
    "exact, so the weights keep their mean whatever the path), its final state a weighted draw from p(z|x)")
ESS_WARN_SHARE = 0.1  # a warning when the mean ESS is below this share of the draws ...
MOVES_WARN_NATS = 0.2  # ... or when a tenth of the draws moves the mean log p(x) by more than this


CHECK_SENTENCES = 32  # AIS's convergence checks (half the temperatures, more chains) run on this many


@dataclass
class HalfSchedule:
    """AIS's convergence check: the mean NLL of the first `sentences` by the full schedule (`full_steps`
    temperatures) and by `steps`, half as many."""

    sentences: int
    steps: int
    full_steps: int
    nll_full: float
    nll_half: float
    stderr: float  # of their difference, from its spread over the sentences (the chains' own noise)


DRAWS_CHECK_FACTOR = 4  # the check of AIS's draws runs this many times the chains (`DrawsCheck`)


@dataclass
class DrawsCheck:
    """AIS's check of its draws: the first `sentences` again with `more_chains` = m x `chains` AIS chains
    each, in m step groups of `chains` (`annealing.annealed_log_likelihood(step_group=)`), so that each group
    is one run of evaluate's own estimator: the mean NLL by those runs (`nll_default`, averaged over the m)
    and by all the chains together (`nll_more`), from the same chains."""

    sentences: int
    chains: int
    more_chains: int
    nll_default: float
    nll_more: float
    stderr: float  # of their difference, from its spread over the sentences


def draws_check(log_w, chains: int) -> DrawsCheck:
    """`DrawsCheck` from the log weights (sentences, m x chains) of chains run in step groups of `chains`."""
    from textebm.evaluation.paired import paired_difference
    from textebm.inference.likelihood import jackknife_log_mean_exp

    n, more = log_w.shape
    log_w = log_w.double()
    runs = jackknife_log_mean_exp(log_w.view(n, more // chains, chains)).mean(1)
    pooled = jackknife_log_mean_exp(log_w)
    change = paired_difference(runs.tolist(), pooled.tolist())  # -log p by all chains + log p by one run's
    return DrawsCheck(n, chains, more, -float(runs.mean()), -float(pooled.mean()), change.stderr)


def trust(res, num_samples: int, annealed: bool = False, half: HalfSchedule | None = None,
          draws: DrawsCheck | None = None) -> dict:
    """How far to trust the importance-sampled NLL: the weights' effective sample size per sentence,
    the estimate from the first tenth of the draws next to the full one, and `warnings` (empty when
    neither check fires). With the tenth's estimate below the full one by more than MOVES_WARN_NATS
    (log-mean-exp of fewer draws errs low), more draws would move the NLL further. `annealed`: the draws
    are AIS chains, whose downward bias falls with more temperatures and with more chains (and whose
    ESS can be high while the estimate is still low: docs/evaluate-command.md), so the advice names both,
    and the tenth of a handful of chains checks nothing: it is reported, not warned about; `half` and
    `draws`: their convergence checks, warned about when half the temperatures, or DRAWS_CHECK_FACTOR
    times the chains, move the NLL by more than MOVES_WARN_NATS and by more than three standard errors of
    the move (the chains' own noise)."""
    import torch

    log_w_var = res.log_w.double().var(1, correction=1) if res.log_w.shape[1] > 1 else torch.zeros_like(res.ess)
    tenth = max(1, num_samples // 10)
    nll, nll_tenth = -float(res.log_px.double().mean()), -float(res.tenth().double().mean())
    ess_share = float(res.ess.mean()) / num_samples
    warnings = []
    remedy = "raise --anneal-steps (and --num-is-samples)" if annealed else "raise --num-is-samples"
    if ess_share < ESS_WARN_SHARE:
        warnings.append(f"mean ESS {float(res.ess.mean()):.1f} is {ess_share:.0%} of {num_samples} draws "
                        f"(below {ESS_WARN_SHARE:.0%}): the NLL may be too high; {remedy}")
    if not annealed and abs(nll_tenth - nll) > MOVES_WARN_NATS:  # (AIS: by its schedule and its draws, below)
        warnings.append(f"the NLL moved {nll_tenth - nll:+.2f} nats per sentence from {tenth} to {num_samples} draws "
                        f"(more than {MOVES_WARN_NATS:g}): not converged; {remedy}")
    checks = {}  # AIS's convergence checks, as reported
    if half is not None:
        change = half.nll_full - half.nll_half
        checks["half_schedule"] = {"sentences": half.sentences, "anneal_steps": half.steps,
                                   "nll_per_sentence_full": half.nll_full, "nll_per_sentence_half": half.nll_half,
                                   "nll_change_from_half": change, "nll_change_stderr": half.stderr}
        if abs(change) > max(MOVES_WARN_NATS, 3 * half.stderr):
            warnings.append(f"the NLL of the first {half.sentences} sentences moved {change:+.2f} nats per sentence "
                            f"from {half.steps} to {half.full_steps} temperatures (more than {MOVES_WARN_NATS:g} and "
                            f"three standard errors, {half.stderr:.2f} each): not converged; raise --anneal-steps")
    if draws is not None:
        change = draws.nll_more - draws.nll_default
        checks["draws_check"] = {"sentences": draws.sentences, "num_samples": draws.chains,
                                 "more_samples": draws.more_chains, "nll_per_sentence_default": draws.nll_default,
                                 "nll_per_sentence_more": draws.nll_more, "nll_change_with_more": change,
                                 "nll_change_stderr": draws.stderr}
        if abs(change) > max(MOVES_WARN_NATS, 3 * draws.stderr):
            warnings.append(f"the NLL of the first {draws.sentences} sentences moved {change:+.2f} nats per sentence "
                            f"from {draws.chains} to {draws.more_chains} AIS chains each (more than "
                            f"{MOVES_WARN_NATS:g} and three standard errors, {draws.stderr:.2f} each): not converged "
                            "in its draws; raise --num-is-samples (or --anneal-steps: longer chains need fewer)")
    return {"ess_mean": float(res.ess.mean()), "ess_median": float(res.ess.median()), "ess_min": float(res.ess.min()),
            "ess_share_mean": ess_share, "log_w_var_mean": float(log_w_var.mean()),
            "nll_per_sentence_tenth_draws": nll_tenth, "tenth_draws": tenth,
            "nll_change_from_tenth": nll - nll_tenth, **checks, "warnings": warnings}


def partition_warnings(partition: dict) -> list[str]:
    """AIS's own checks of log Z, as warnings. (They cannot see a narrow mode that no chain found:
    docs/evaluate-command.md.)"""
    ais = partition.get("ais")
    if ais is None:
        return []
    warnings = []
    if not ais["converged"]:
        warnings.append(f"log Z: AIS on half the schedule differs by {ais['half_schedule_difference']:+.3f} nats: "
                        "raise --ais-steps")
    if ais["ess"] < ESS_WARN_SHARE * ais["num_chains"]:
        warnings.append(f"log Z: AIS's ESS {ais['ess']:.0f} of {ais['num_chains']} chains: raise --ais-steps")
    return warnings


def posterior_code(config) -> str:
    """Where the latent-usage figures' posterior code z+ comes from, in words."""
    return "one draw from q(z|x)" if config.model == "vae" else "one posterior chain (the run's settings)"


def vae_importance_sampling(options: EvaluationOptions, sampling: dict, res) -> dict:
    """The VAE's importance-sampling report (textebm/inference/likelihood.py, 3.): q(z|x) alone is the proposal."""
    return {"estimator": "log p(x) = the jackknife of logmeanexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)], "
                         "z_s ~ q(z|x), the VAE's encoder, alone (no defensive mixture); the VAE papers' estimator "
                         "(Burda et al. 2016) is the plain logmeanexp of the same draws: nll_per_sentence_bound; "
                         "both are >= the Monte Carlo ELBO of the same draws, sentence by sentence",
            "proposal": "q(z|x) = N(mu(x), diag sigma(x)^2), the encoder", "num_samples": options.num_is_samples,
            "defensive_share": 0.0, **sampling, "q_std_mean": float(res.chain_std.mean())}


def vae_figures(res, config, nll_per_sentence: float, elbo_per_sentence: float) -> dict:
    """The VAE's own figures: KL(q(z|x) || p(z)) per sentence and dimension (closed form, from q's
    mean and std at each evaluated sentence), dimensions above the free-bits floor, the VAE papers'
    active units (variance of q's mean across sentences), and how much tighter the IS estimate is
    than the ELBO."""
    import torch

    from textebm.inference.vae_diagnostics import (
        AU_VARIANCE,
        aggregate_posterior_information,
        kl_figures,
        mean_variance_active_units,
    )
    from textebm.model.vae import gaussian_kl

    kl = kl_figures(gaussian_kl(res.chain_mean, res.chain_std, config.prior_sigma), config.free_bits)
    aggregate_mi = aggregate_posterior_information(res.chain_mean, res.chain_std, torch.Generator(
        device=res.chain_mean.device).manual_seed(0))
    return {**kl, "mutual_information_aggregate": aggregate_mi,
            "active_units_mean_variance": mean_variance_active_units(res.chain_mean),
            "active_units_mean_variance_threshold": AU_VARIANCE,
            "bound_gap_per_sentence": -elbo_per_sentence - nll_per_sentence,
            "kl_anneal_steps": config.kl_anneal_steps, "ae_pretrain_steps": config.ae_pretrain_steps,
            "estimators": {
                "kl_per_sentence": "mean over sentences of KL(q(z|x) || N(0, sigma^2 I)) in closed form, nats",
                "mutual_information_aggregate": "He et al. 2019's I_q(x; z) = E_x[-H(q(z|x))] - E_q(z)[-log q(z)], "
                                                "q(z) the mean of q(z|x_j) over the evaluated sentences, one draw "
                                                "each; the quantity is at most log N (N sentences), its "
                                                "one-draw estimate can pass it for small N. The figure the VAE "
                                                "papers report, not latent_usage.mutual_information (the model's own)",
                "active_units_mean_variance": f"dimensions with Var_x E_q[z_i] > {AU_VARIANCE} (Burda et al. 2016)",
                "bound_gap_per_sentence": "-ELBO - NLL: what importance sampling gains over the bound (>= 0)"}}


def text_digest(lines: list[str]) -> str:
    """sha256 of the evaluated lines: what `compare` pairs by, and a resume checks."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def options_record(options: EvaluationOptions) -> dict:
    """The options as a dict, the protocol's as `protocol_record` keeps them."""
    record = asdict(options)
    record["protocol"] = protocol_record(record["protocol"])
    return record


def protocol_record(protocol: dict) -> dict | None:
    """The protocol's options only when wKL or the neural rPPL was asked for (else they change nothing, and
    must not count as other options), and without where its reverse LM is kept. Also reads a report written
    before 2026-12-08, which recorded them all (`reports.keep_earlier_report`)."""
    if not (protocol.get("wkl") or protocol.get("neural_rppl")):
        return None
    return {k: v for k, v in protocol.items() if k != "keep"}


def report_options(options: EvaluationOptions) -> dict:
    """The options a report was made with (JSON-ready), but for where and how it ran."""
    return json.loads(json.dumps({k: v for k, v in options_record(options).items() if k not in PLACE_KEYS}))
