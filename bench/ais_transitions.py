"""Where `evaluate`'s AIS loses its accuracy, on a run's own held-out sentences: the path or the moves.

    python -m bench.ais_transitions RUN --out FILE.json [--sentences 20] [--first 0] [--chains 16]
        [--temperatures 60] [--split test] [--data-dir DIR] [--seed 0] [--threads 1]

From evaluate's reference (its tempered chains and Laplace mixture, `likelihood.annealing_reference`),
`--chains` AIS chains per sentence run evaluate's path (`annealing.annealed_log_likelihood`, traced).
Reported: the mean over sentences of the variance of a sentence's log weights (what decides how far
the log-mean-exp of 2 chains falls short); what that variance would be with perfect transitions on
this schedule and on the best schedule of as many temperatures (`annealing.transition_variances`,
from the traced Var_{pi_beta}(l)); the step size, acceptance and Var(l) along beta; and the
curvature of -log p(x, z) at the chains' final states in the coordinates the chains move in (the
heaviest component's whitening): eigenvalues near 1 mean the Laplace whitening fits the posterior,
large ones are the stiff directions that hold MALA's step down. A measured variance many times the
perfect-transition one says the chains lag behind the path: another schedule cannot help, better
moves can. FILE (JSON) is written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_text

DECILES = 11  # the profile's points: beta = 0, 0.1, ..., 1
STIFFNESS_DRAWS = 4  # final states per sentence whose curvature is measured (d + 1 gradient rows each)


def measure(loaded, sentences: list[list[int]], chains: int, temperatures: int, seed: int) -> dict:
    """The figures of the module docstring for `sentences` (id lists), in batches of 10."""
    import torch

    from textebm.data.batches import pad
    from textebm.evaluation.held_out import EvaluationOptions
    from textebm.inference.annealing import MixtureReference, annealed_log_likelihood, transition_variances
    from textebm.inference.laplace import negative_hessian
    from textebm.inference.likelihood import annealing_reference

    options = EvaluationOptions(checkpoint="").check()
    model, generator = loaded.model, torch.Generator().manual_seed(seed)
    variances, traces, weights, eigenvalues = [], [], [], []
    tic = time.process_time()
    for start in range(0, len(sentences), 10):
        tokens = pad(sentences[start:start + 10], loaded.vocab.pad_id).to(model.device)
        b = tokens.shape[0]
        codes = model.posterior_chains(tokens, options.num_chains, None, generator)
        reference = annealing_reference(model, tokens, codes, curvature_directions=options.curvature_directions)
        _, run = annealed_log_likelihood(model, tokens, reference, 0.0, chains, temperatures, generator=generator,
                                         trace=True)
        variances += run.log_w.view(b, chains).var(1).tolist()
        traces.append(run.trace)
        weights.append(b)
        if isinstance(reference, MixtureReference):
            heaviest = reference.log_weights.argmax(1)
            whitening = reference.matrices[torch.arange(b, device=heaviest.device), heaviest]
        else:
            whitening = reference.matrix
        draws = min(chains, STIFFNESS_DRAWS)
        ends = run.z.view(b, chains, -1)[:, :draws].reshape(b * draws, -1)
        precision, _ = negative_hessian(model, tokens.repeat_interleave(draws, 0), ends)
        matrix = whitening.repeat_interleave(draws, 0)
        eigenvalues.append(torch.linalg.eigvalsh((matrix.transpose(1, 2) @ precision @ matrix).double()))
    seconds = time.process_time() - tic
    share = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    trace = {k: sum(w * t[k].double().cpu() for w, t in zip(share, traces)) for k in ("step", "acceptance",
                                                                                      "ell_variance")}
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), traces[0]["beta"]])
    on_schedule, least = transition_variances(betas, trace["ell_variance"])
    measured = sum(variances) / len(variances)
    points = [round(i * (len(betas) - 2) / (DECILES - 1)) for i in range(DECILES)]
    ev = torch.cat(eigenvalues)

    def quantiles(values):
        return {f"q{q}": float(values.quantile(q / 100)) for q in (10, 50, 90)}

    return {
        "sentences": len(sentences), "chains": chains, "temperatures": temperatures,
        "estimator": {"tempered_chains": options.num_chains, "curvature_directions": options.curvature_directions},
        "log_weight_variance": measured, "perfect_transitions": on_schedule, "best_schedule": least,
        "lag_factor": measured / on_schedule if on_schedule > 0 else math.inf,
        "profile": {"beta": [float(betas[i + 1]) for i in points],  # the move's; Var(l) is at the one before
                    "beta_before": [float(betas[i]) for i in points],
                    **{k: [float(trace[k][i]) for i in points] for k in trace}},
        "stiffness": {"largest": quantiles(ev[:, -1]), "median": quantiles(ev[:, ev.shape[1] // 2]),
                      "smallest": quantiles(ev[:, 0])},
        "cpu_s_per_sentence": seconds / len(sentences),
    }


def report(figures: dict) -> str:
    p, s = figures["profile"], figures["stiffness"]
    lines = [
        f"{figures['sentences']} sentences, {figures['chains']} AIS chains x {figures['temperatures']} temperatures "
        f"from evaluate's reference ({figures['cpu_s_per_sentence']:.1f} CPU s per sentence)",
        f"Var(log w) per sentence: measured {figures['log_weight_variance']:.2f}; with perfect transitions "
        f"{figures['perfect_transitions']:.2f} on this schedule, {figures['best_schedule']:.2f} on the best one "
        f"(the chains' lag: {figures['lag_factor']:.1f}x)",
        "beta:         " + " ".join(f"{x:6.2f}" for x in p["beta"]),
        "step:         " + " ".join(f"{x:6.2f}" for x in p["step"]),
        "acceptance:   " + " ".join(f"{x:6.2f}" for x in p["acceptance"]),
        "Var(l):       " + " ".join(f"{x:6.1f}" for x in p["ell_variance"]) + "   (at the temperature before)",
        "curvature in the chains' coordinates at their final states (q10/q50/q90): largest eigenvalue "
        + "/".join(f"{v:.2f}" for v in s["largest"].values()) + ", median "
        + "/".join(f"{v:.2f}" for v in s["median"].values()) + ", smallest "
        + "/".join(f"{v:.2f}" for v in s["smallest"].values()) + " (1: the whitening fits)",
    ]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.ais_transitions", description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--sentences", type=int, default=20)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--chains", type=int, default=16, help="AIS chains per sentence (at least 2: a variance)")
    p.add_argument("--temperatures", type=int, default=None, help="default: evaluate's")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if min(args.sentences, args.threads) < 1 or args.first < 0 or args.chains < 2:
            raise UserError("--sentences and --threads must be at least 1, --chains at least 2, --first at least 0")
        if args.temperatures is not None and args.temperatures < 1:
            raise UserError("--temperatures must be at least 1")
        import torch

        from bench import held_out_sentences, load_latent_run
        from textebm.evaluation.held_out import EvaluationOptions

        torch.set_num_threads(args.threads)
        loaded = load_latent_run(args.run, "AIS from the Laplace reference")
        sentences = held_out_sentences(loaded, args.data_dir, args.split, args.first, args.sentences)
        temperatures = args.temperatures or EvaluationOptions(checkpoint="").check().anneal_steps
        figures = measure(loaded, sentences, args.chains, temperatures, args.seed)
        figures = {"run": str(Path(args.run).resolve()), "step": loaded.step, "split": args.split,
                   "first": args.first, "seed": args.seed, **figures}
        atomic_write_text(Path(args.out), json.dumps(figures, indent=1) + "\n")
    except UserError as err:
        print(f"ais_transitions: error: {err}", file=sys.stderr)
        return 2
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
