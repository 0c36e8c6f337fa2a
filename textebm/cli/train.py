"""`textebm train`: train a latent-EBM prior model on a corpus, into a run folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from textebm.cli.common import path_type, seed_type
from textebm.devices import add_device_argument, resolve_device


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a corpus",
                              description="Train by maximum likelihood with short-run Langevin chains.")
    p.add_argument("--corpus", help="ptb, snli, yahoo, or a path to a text file / folder (with --resume: the "
                                    "run's own, from its config)")
    p.add_argument("--data-dir", type=path_type,
                   help="folder holding <corpus>/{train,valid,test}.txt (default: $TEXTEBM_DATA_DIR, else data/; "
                        "with --resume: the files the run recorded, where they still are)")
    p.add_argument("--out", type=path_type, help="run folder (default: runs/<corpus>-<time>)")
    p.add_argument("--preset", help="config preset (default: by device: the corpus's own, paper-scale preset on "
                                    "CUDA, 'cpu' on a CPU); e.g. cpu, ptb")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set latent_dim=64 (repeatable)")
    p.add_argument("--tokenizer", choices=["word", "treebank", "sentencepiece"], help="tokenizer (config key)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size (config key vocab_size)")
    p.add_argument("--train-split", help="train on another split, for development (e.g. valid); saved in the config")
    p.add_argument("--max-steps", type=int,
                   help="stop once the run has made this many steps in all (with --resume too: a total, not more)")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes of wall-clock time (this process)")
    p.add_argument("--max-cpu-minutes", type=float,
                   help="stop after this many minutes of training CPU time, counted over every resume (steps "
                        "only, validation not counted; with --threads 1 the same number of steps under any load)")
    p.add_argument("--keep-at", type=_minutes_list, default=(), metavar="M1,M2,...",
                   help="copy the run to RUN/marks/cpu-<M>min/ when its training CPU time reaches each of these "
                        "minutes (complete run folders that evaluate, sample and serve like the run)")
    p.add_argument("--seed", type=seed_type, help="random seed (config key seed)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (from step 0 when it stopped before "
                        "its first), with its saved config and corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(p)
    p.set_defaults(run=run)


def _minutes_list(text: str) -> tuple[float, ...]:
    try:
        minutes = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes separated by commas, e.g. 5,10,20, not {text!r}") from None
    if not minutes or any(not m > 0 for m in minutes):
        raise argparse.ArgumentTypeError(f"expected positive minutes separated by commas, not {text!r}")
    return minutes


def _config_overrides(args: argparse.Namespace) -> list[str]:
    """`--set` items, then the flags that are config keys; one key given both ways is refused (the flag
    won without a word)."""
    from textebm.errors import UserError

    extra = []
    set_keys = {item.split("=", 1)[0].strip() for item in args.overrides}
    for key, value in (("tokenizer", args.tokenizer), ("vocab_size", args.vocab_size),
                       ("train_split", args.train_split), ("seed", args.seed)):
        if value is not None:
            if key in set_keys:
                raise UserError(f"--{key.replace('_', '-')} and --set {key}=... both given: give one")
            extra.append(f"{key}={value}")
    return [*args.overrides, *extra]


def _same_corpus(given: str, saved: str) -> bool:
    """`--corpus` names the saved corpus: the same name, or the same file or folder however spelled."""
    return given == saved or (Path(given).exists() and Path(given).resolve() == Path(saved).resolve())


def run(args: argparse.Namespace) -> int:
    """Under torchrun: the process's own device first, then the process group (its backend from that
    device), then training; on any exit the group is left with no DDP wrapper still held."""
    import gc

    from textebm.errors import UserError
    from textebm.training.parallel import local_device, shutdown, start

    device = local_device(resolve_device(args.device, args.threads, args.tf32))
    parallel = start(device)
    try:
        return _train(args, parallel, device)
    except (UserError, KeyboardInterrupt) as err:
        # Reported in one line without their tracebacks, whose frames (and the closures they run) hold
        # the learner's DDP wrappers and through them the process group: dropped before the group is left.
        while err is not None:
            err.__traceback__ = None
            err = err.__cause__ or err.__context__
        raise
    finally:
        if parallel.distributed:
            gc.collect()  # the wrappers' reference cycles
            shutdown()


def _train(args: argparse.Namespace, parallel, device) -> int:
    """The options checked, the run made ready (textebm.training.setup), trained, and its end said."""
    from tqdm.auto import tqdm

    from textebm.config import device_preset, resolve_config
    from textebm.errors import UserError
    from textebm.evaluation.plots import plot_learning_curves
    from textebm.io import check_writable
    from textebm.model.runs import load_config
    from textebm.training.setup import new_run, resumed_run
    from textebm.training.training_log import METRICS, add_figure

    if args.max_steps is not None and args.max_steps < 1:
        raise UserError("--max-steps must be at least 1")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError("--max-minutes must be positive")
    if args.max_cpu_minutes is not None and not args.max_cpu_minutes > 0:
        raise UserError("--max-cpu-minutes must be positive")
    echo = tqdm.write if parallel.is_main else (lambda text: None)

    preset_note = None
    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out RUN (the run folder to continue)")
        if _config_overrides(args) or args.preset:
            raise UserError("--resume continues with the run's saved config; drop --preset/--set and config flags")
        folder = Path(args.out)
        config = load_config(folder)
        if args.corpus is not None and not _same_corpus(args.corpus, config.corpus):
            raise UserError(f"--corpus {args.corpus} is not the corpus of the run in {folder} ({config.corpus}): "
                            "--resume continues on the run's own corpus; drop --corpus")
    else:
        if args.corpus is None:
            raise UserError("--corpus is required (ptb, snli, yahoo, or a path to text); only --resume reads it "
                            "from the run")
        name = Path(args.corpus).name if args.corpus not in ("ptb", "snli", "yahoo") else args.corpus
        folder = check_writable(Path(args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"), folder=True)
        preset = args.preset
        if preset is None:
            preset, preset_note = device_preset(args.corpus, device.type == "cuda")
        config = resolve_config(preset, args.corpus, _config_overrides(args))
    past = [m for m in args.keep_at if args.max_cpu_minutes is not None and m > args.max_cpu_minutes]
    if past:  # never reached: the run stops at its CPU budget
        raise UserError(f"--keep-at {', '.join(f'{m:g}' for m in past)} is past --max-cpu-minutes "
                        f"{args.max_cpu_minutes:g}: the run stops before it")
    if not config.max_epochs and args.max_steps is None and args.max_minutes is None and args.max_cpu_minutes is None:
        raise UserError("training has no end: give --max-steps, --max-minutes, --max-cpu-minutes or a positive "
                        "max_epochs")
    run = (resumed_run(folder, args.data_dir, device, parallel) if args.resume
           else new_run(folder, config, args.data_dir, device, parallel))
    if preset_note:  # printed once the input is known to be good: an error stays a single line
        echo(preset_note)
    for line in run.summary(device, parallel):
        echo(line)
    result = run.train(device, args.max_steps, args.max_minutes, args.max_cpu_minutes, args.keep_at,
                       progress=not args.no_progress, echo=echo, parallel=parallel)
    if parallel.is_main and (folder / METRICS).is_file():  # none when stopped before its first step
        png = plot_learning_curves(folder)
        echo(f"learning curves: {png}" + (" (and in TensorBoard)" if add_figure(folder, "learning_curves", png,
                                                                            result.step) else ""))
    parallel.barrier()  # the others wait for the figure: torchrun ends every process once one exits 130
    if result.stopped_by == "interrupt":
        echo(f"interrupted: resume with  textebm train --resume --out {folder}")
        return 130
    return 0
