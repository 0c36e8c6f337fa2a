"""Helpers shared by subcommands: the `--set` option of chain settings, loading a run with a latent,
reading a file of sentences.

(Device options live in `textebm.devices`, shared with the server's launcher.)"""

from __future__ import annotations

from textebm.errors import UserError


def add_chain_argument(parser) -> None:
    """`--set KEY=VALUE` for the chain settings of a trained run (textebm.config.CHAIN_KEYS)."""
    parser.add_argument("--set", dest="chain", action="append", default=[], metavar="KEY=VALUE",
                        help="run the Langevin chains with other settings than the run trained with, e.g. "
                             "--set posterior_noise=1 (chain keys only: prior_steps, prior_step_size, prior_noise, "
                             "posterior_steps, posterior_step_size, posterior_step_schedule, "
                             "posterior_step_size_end, posterior_noise, chain_precision; repeatable)")


def read_sentences(path: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file (.gz allowed); a clear UserError otherwise."""
    import gzip
    from pathlib import Path

    from textebm.corpora import check_text_file

    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    check_text_file(file)  # UTF-8, at least one sentence
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def load_latent_run(folder: str, device_name: str, threads: int | None, command: str, chain: list[str] = (),
                    tf32: bool = True):
    """A run for a command about its latent space; a run trained with prior=none has none."""
    from textebm.devices import resolve_device
    from textebm.runs import load_run

    loaded = load_run(folder, resolve_device(device_name, threads, tf32), chain)
    if not loaded.model.has_latent:
        raise UserError(f"textebm {command}: {folder} was trained with prior=none (a language model "
                        "without a latent), so it has no latent space to explore")
    return loaded
