"""`evaluate`'s NLL estimator against a reference of many times its work, on a run's own held-out
sentences: the check that decides the estimator's defaults (issue 24: re-measured curvature,
`--curvature-directions`, against evaluator 7's every-end-its-own-Hessian).

    python -m bench.curvature_check RUN --out FILE.json [--sentences 100] [--first 0] [--repeats 4]
        [--variant default=3:60:8:8@auto/128 --variant fp32-path=3:60:8:8] [--reference 16:200:16]
        [--reference-seeds 1] [--ais 1000x2000] [--split test] [--data-dir DIR] [--seed 0] [--threads 1]

A variant `NAME=C:T:N[:K][@P][/S]` is `evaluate --num-chains C --anneal-steps T --num-is-samples N
[--curvature-directions K] [--path-precision P] [--path-shortlist S]`: C tempered chains, AIS from the
mixture of their ends' Laplace Gaussians through T temperatures, N AIS chains per sentence, K re-measured
directions (absent: each end its own Hessian), the decoder's projection P at the temperatures below 1
(fp32, bf16, or auto: bf16 where native; absent: fp32, as the reference), and there the shortlist of S
words per position (absent: the whole vocabulary, as the reference). Every estimate runs through
`likelihood.evaluate_sentences`, the path of `evaluate`. The reference runs `--reference-seeds` times
(seeds seed, seed + 1000, ...), its AIS chains' log weights kept, and is their pooled jackknife per
sentence: every chain's weight estimates Z_alpha p(x) whichever run's mixture it started from, so the
pool is one reference with all the runs' chains and all their modes (one run's estimate moves with its
seed by more than the spread of its own chains says: docs/evaluate-command.md). Each variant runs
`--repeats` times with fresh randomness. Reported per variant: the mean over sentences of (estimate -
reference) in each repeat, their mean and standard error over the repeats, and CPU seconds per sentence.
FILE is rewritten (atomically) after the reference and after every repeat, and read back by the same
command: what is done is skipped, so a long check (the reference costs some 20-36 CPU s per PTB
sentence) resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_text

DEFAULT_VARIANTS = ("default=3:60:8:8@auto/128", "whole-vocabulary=3:60:8:8@auto")


@dataclass(frozen=True)
class Estimator:
    """`evaluate`'s options for one estimate (`NAME=C:T:N[:K][@P][/S]`)."""
    name: str
    tempered_chains: int
    temperatures: int
    ais_chains: int
    directions: int | None = None
    path: str = "fp32"
    shortlist: int = 0

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> Estimator:
        from textebm.evaluation.held_out import PATH_PRECISIONS

        label, sep, spec = text.partition("=")
        if not sep:
            label, spec = name or text, text
        spec, slash, shortlist = spec.partition("/")
        spec, at, path = spec.partition("@")
        parts = spec.split(":")
        if (not label or len(parts) not in (3, 4) or not all(p.isdigit() and int(p) > 0 for p in parts)
                or (at and path not in PATH_PRECISIONS) or (slash and not shortlist.isdigit())):
            raise UserError(f"estimator {text!r}: expected NAME=C:T:N or NAME=C:T:N:K with positive integers "
                            "(tempered chains, AIS temperatures, AIS chains, curvature directions), optionally "
                            f"@ the path's precision ({', '.join(PATH_PRECISIONS)}) and / its shortlist's words per "
                            "position: default=3:60:8:8@auto/128")
        numbers = [int(p) for p in parts]
        return cls(label, *numbers[:3], numbers[3] if len(numbers) == 4 else None, path if at else "fp32",
                   int(shortlist) if slash else 0)

    @property
    def spec(self) -> str:
        numbers = ":".join(str(n) for n in (self.tempered_chains, self.temperatures, self.ais_chains, self.directions)
                           if n is not None)
        numbers = numbers if self.path == "fp32" else f"{numbers}@{self.path}"
        return f"{numbers}/{self.shortlist}" if self.shortlist else numbers


REFERENCE_SEED_STRIDE = 1000  # reference run i uses seed + i * this; a variant's repeat r uses seed + 1 + r


def estimate(loaded, sentences: list[list[int]], log_z: float, estimator: Estimator, seed: int):
    """`estimator`'s `ISResult` on the sentences (evaluate's code path) and the CPU seconds per sentence."""
    import torch

    from textebm.devices import resolve_chain_precision
    from textebm.inference.likelihood import evaluate_sentences

    tic = time.process_time()
    result = evaluate_sentences(loaded.model, sentences, loaded.vocab.pad_id, log_z, estimator.tempered_chains,
                                estimator.ais_chains, torch.Generator().manual_seed(seed),
                                anneal_steps=estimator.temperatures, curvature_directions=estimator.directions,
                                path_projection=resolve_chain_precision(estimator.path, loaded.model.device),
                                path_shortlist=estimator.shortlist)
    return result, (time.process_time() - tic) / len(sentences)


def pooled_reference(runs: list[dict]) -> list[float]:
    """Per sentence, the jackknife of logmeanexp over every reference run's AIS chains together."""
    import torch

    from textebm.inference.likelihood import jackknife_log_mean_exp

    log_w = torch.cat([torch.tensor(run["log_w"], dtype=torch.float64) for run in runs], 1)
    return jackknife_log_mean_exp(log_w).tolist()


def summary(reference: list[float], repeats: list[list[float]]) -> dict:
    """Mean over sentences of estimate - reference per repeat; their mean and standard error over repeats."""
    diffs = [statistics.fmean(e - r for e, r in zip(est, reference)) for est in repeats]
    stderr = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"differences": diffs, "mean": statistics.fmean(diffs), "stderr": stderr}


def check(loaded, sentences: list[list[int]], reference: Estimator, variants: list[Estimator], repeats: int,
          ais: tuple[int, int], seed: int, out: Path, figures: dict, reference_seeds: int = 1) -> dict:
    """Fill `figures` (as read back from `out`) with what is missing, saving after every estimate; the
    variants' differences follow the reference as its runs are added."""
    import torch

    from textebm.inference.likelihood import partition_function

    if "log_z" not in figures:
        partition, _ = partition_function(loaded.model.prior, *ais, generator=torch.Generator().manual_seed(seed))
        figures["log_z"] = partition["log_z"]
    log_z = figures["log_z"]
    pool = figures.setdefault("reference", {"spec": reference.spec, "runs": []})
    runs = pool.get("runs")  # None: a file from before --reference-seeds, its one reference kept as it is
    while runs is not None and len(runs) < reference_seeds:
        run_seed = seed + REFERENCE_SEED_STRIDE * len(runs)
        result, seconds = estimate(loaded, sentences, log_z, reference, run_seed)
        runs.append({"seed": run_seed, "log_px": result.log_px.tolist(), "log_w": result.log_w.double().tolist(),
                     "cpu_s_per_sentence": seconds})
        pool.update(log_px=pooled_reference(runs),
                    cpu_s_per_sentence=statistics.fmean(run["cpu_s_per_sentence"] for run in runs))
        for variant in figures["variants"].values():
            if variant["repeats"]:
                variant.update(summary(pool["log_px"], variant["repeats"]))
        atomic_write_text(out, json.dumps(figures, indent=1) + "\n")
    for variant in variants:
        entry = figures["variants"].setdefault(variant.name, {"spec": variant.spec, "repeats": [], "cpu_s": []})
        if entry["spec"] != variant.spec:
            raise UserError(f"{out} holds {variant.name} as {entry['spec']}, not {variant.spec}: name it otherwise")
        while len(entry["repeats"]) < repeats:
            result, seconds = estimate(loaded, sentences, log_z, variant, seed + 1 + len(entry["repeats"]))
            entry["repeats"].append(result.log_px.tolist())
            entry["cpu_s"].append(seconds)
            entry.update(summary(figures["reference"]["log_px"], entry["repeats"]),
                         cpu_s_per_sentence=statistics.fmean(entry["cpu_s"]))
            atomic_write_text(out, json.dumps(figures, indent=1) + "\n")
    return figures


def report(figures: dict) -> str:
    ref = figures["reference"]
    runs = len(ref.get("runs", ()))
    pooled = f", the {runs} runs' chains pooled" if runs > 1 else ""
    lines = [f"{figures['sentences']} {figures['split']} sentences of {figures['run']} (step {figures['step']}, "
             f"from line {figures['first']}); reference {ref['spec']}{pooled}: "
             f"{-statistics.fmean(ref['log_px']):.3f} nats per sentence, {ref['cpu_s_per_sentence']:.1f} CPU s each"]
    if runs > 1:
        alone = ", ".join(f"{-statistics.fmean(run['log_px']):.3f}" for run in ref["runs"])
        lines.append(f"  each run alone: {alone} nats per sentence")
    for name, v in figures["variants"].items():
        if not v["repeats"]:
            continue
        error = "" if v["stderr"] is None else f" ± {v['stderr']:.2f}"
        lines.append(f"{name} ({v['spec']}): estimate - reference {v['mean']:+.2f}{error} nats per sentence over "
                     f"{len(v['repeats'])} repeats; {v['cpu_s_per_sentence']:.2f} CPU s per sentence")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.curvature_check", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run folder (latent EBM or Gaussian prior)")
    p.add_argument("--out", required=True, help="the JSON file of the figures (read back to resume)")
    p.add_argument("--sentences", type=int, default=100)
    p.add_argument("--first", type=int, default=0, help="the first held-out line used")
    p.add_argument("--split", default="test", help="the held-out split (as `evaluate --split`)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--variant", action="append", metavar="NAME=C:T:N[:K][@P]",
                   help=f"an estimator to check (repeatable; default {' and '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--reference", default="16:200:16", metavar="C:T:N[:K]")
    p.add_argument("--reference-seeds", type=int, default=1,
                   help="reference runs with other seeds, their AIS chains pooled per sentence (default 1)")
    p.add_argument("--ais", default="1000x2000", metavar="CxT", help="log Z's AIS: chains x temperatures")
    p.add_argument("--data-dir", help="the corpora's folder (default: TEXTEBM_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        if min(args.sentences, args.repeats, args.threads, args.reference_seeds) < 1 or args.first < 0:
            raise UserError("--sentences, --repeats, --reference-seeds and --threads must be at least 1, "
                            "--first at least 0")
        from bench.bdmc_sandwich import pair

        ais = pair(args.ais, "--ais")
        reference = Estimator.parse(args.reference, "reference")
        variants = [Estimator.parse(v) for v in (args.variant or DEFAULT_VARIANTS)]
        import torch

        from bench import held_out_sentences, load_latent_run

        torch.set_num_threads(args.threads)
        loaded = load_latent_run(args.run, "the check")
        sentences = held_out_sentences(loaded, args.data_dir, args.split, args.first, args.sentences)
        where = {"run": str(Path(args.run).resolve()), "step": loaded.step, "split": args.split,
                 "first": args.first, "sentences": args.sentences, "ais": args.ais, "seed": args.seed}
        try:
            figures = json.loads(out.read_text()) if out.is_file() else {**where, "variants": {}}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{out}: not a check's JSON file ({err}): give another --out") from None
        if {k: figures.get(k) for k in where} != where:
            raise UserError(f"{out} holds another check ({', '.join(k for k in where if figures.get(k) != where[k])} "
                            "differ): give another --out")
        if "reference" in figures and figures["reference"]["spec"] != reference.spec:
            raise UserError(f"{out} holds the reference {figures['reference']['spec']}, not {reference.spec}")
        if "reference" in figures and "runs" not in figures["reference"] and args.reference_seeds > 1:
            raise UserError(f"{out} holds a reference without its AIS chains' weights (written before "
                            "--reference-seeds): nothing to pool it with; give another --out")
        figures = check(loaded, sentences, reference, variants, args.repeats, ais, args.seed, out, figures,
                        args.reference_seeds)
    except UserError as err:
        print(f"curvature_check: error: {err}", file=sys.stderr)
        return 2
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
