"""`textebm reproduce GRID --out DIR`: train and evaluate every run of an experiment grid, resuming
what was interrupted and skipping what is done, then write the results (textebm.experiments.reproduce)."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_data_dir_argument, path_type


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="train and evaluate every run of an experiment grid (resumable); write its tables",
        description="Train and evaluate every run of GRID (a TOML file, or the name of a grid shipped with "
                    "textebm, e.g. results), JOBS at a time with one torch thread each. Started again, it "
                    "resumes interrupted runs from their checkpoints (a wall-clock budget counts the time "
                    "already spent) and skips runs and evaluations already complete. Writes DIR/results.json, "
                    "DIR/results.md (markdown tables) and a quality-diversity figure per corpus.")
    p.add_argument("grid", metavar="GRID", help="grid file, or the name of a shipped grid (results)")
    p.add_argument("--out", type=path_type, required=True, metavar="DIR", help="folder of the runs and the results")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="processes at a time (default 1)")
    p.add_argument("--train-only", action="store_true",
                   help="train (or resume) every run, leave the evaluations for a later call")
    p.add_argument("--dry-run", action="store_true", help="list what is done and what would run; start nothing")
    p.add_argument("--results-only", action="store_true",
                   help="write DIR/results.json, results.md and the figures from what is done now; start nothing "
                        "(a grid that runs across sessions, reported half-way)")
    add_data_dir_argument(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: --jobs processes on this machine (default); slurm: one Slurm job per run that has "
                        "something left to do, through submitit (requeued jobs resume from their checkpoints)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a Slurm option for --executor slurm (submitit's names: partition, time in minutes or "
                        "HH:MM:SS, gpus_per_node, mem, account, qos, ...; over the grid's [slurm] table)")
    p.add_argument("--no-wait", action="store_true",
                   help="--executor slurm: submit and return (the same command again waits for the jobs still "
                        "queued or running, submitting no run twice, and writes the results)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from textebm.errors import UserError
    from textebm.experiments.grid import load_grid
    from textebm.experiments.reproduce import format_plan, plan, reproduce
    from textebm.io import check_writable

    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, not {args.jobs}")
    if args.executor != "slurm" and (args.slurm or args.no_wait):
        raise UserError("--slurm and --no-wait are for --executor slurm")
    grid = load_grid(args.grid)
    out = check_writable(Path(args.out).expanduser(), folder=True)
    if args.dry_run:
        if args.executor == "slurm":
            from textebm.experiments.cluster import slurm_options

            slurm_options(grid.slurm, args.slurm)  # a wrong option before anything is planned on it
        print(format_plan(grid, out, plan(grid, out), None if args.executor == "slurm" else args.jobs))
        return 0
    command = shlex.join(_same_call(args))
    if args.results_only:
        from textebm.experiments.reproduce import write_grid_results

        print(format_plan(grid, out, plan(grid, out), args.jobs))
        for path in write_grid_results(grid, out, command):
            print(f"wrote {path}")
        return 0
    if args.executor == "slurm":
        return _on_slurm(args, grid, out, command)
    from textebm.devices import resolve_device

    resolve_device(args.device)  # a device this machine lacks fails here once, not in every run's training
    status = reproduce(grid, out, args.jobs, args.data_dir, args.device, command,
                       echo=lambda text: print(text, flush=True), train_only=args.train_only)
    if status == "interrupted":
        print(f"interrupted: run `{command}` again to resume", file=sys.stderr)
        return 130
    return 0 if status == "done" else 1


def _same_call(args: argparse.Namespace) -> list[str]:
    """This call's command line, every option that changes what it does kept: what resumes it (a hint that
    left out --train-only would have started the evaluations), and what results.md says made it."""
    argv = ["textebm", "reproduce", args.grid, "--out", args.out, "--jobs", str(args.jobs)]
    argv += ["--train-only"] if args.train_only else []
    argv += ["--data-dir", args.data_dir] if args.data_dir else []
    argv += ["--device", args.device] if args.device != "auto" else []
    if args.executor != "local":
        argv += ["--executor", args.executor, *[arg for item in args.slurm for arg in ("--slurm", item)]]
    return argv


def _on_slurm(args, grid, out, command: str) -> int:
    import signal

    from textebm.experiments.cluster import slurm_executor, slurm_options, slurm_queue, submit_grid, wait_for
    from textebm.experiments.reproduce import check_corpora, format_plan, plan, write_grid_results

    check_corpora(grid, args.data_dir, args.train_only)
    executor = slurm_executor(out / "slurm", slurm_options(grid.slurm, args.slurm))
    echo = lambda text: print(text, flush=True)  # noqa: E731
    steps = plan(grid, out)
    echo(format_plan(grid, out, steps, None))
    jobs, busy = submit_grid(grid, out, executor, args.data_dir, args.device, args.train_only, echo, steps,
                             queued=slurm_queue)
    if args.no_wait:
        echo(f"{len(jobs)} job{'s' * (len(jobs) != 1)} queued or running; `{command}` again waits for them (it "
             "submits no run twice) and writes the results")
        return 1 if busy else 0

    def stop_waiting(signum, frame):  # SIGTERM, SIGHUP: as Ctrl-C, the jobs go on
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop_waiting) or signal.SIG_DFL for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        status = wait_for(jobs, echo, queued=slurm_queue)
    except KeyboardInterrupt:
        echo(f"the jobs go on running on the cluster; `{command}` waits for them again and writes the results")
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for path in write_grid_results(grid, out, command):
        echo(f"wrote {path}")
    return 0 if status == "done" and not busy else 1
