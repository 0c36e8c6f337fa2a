"""Helpers shared by subcommands: the types of `--seed` and of paths, the bounds of decoding's `--max-length`
and of the other counts, the `--set` option of chain settings, loading a run with a latent, reading a file of
sentences.

(Device options live in `textebm.devices`, shared with the server's launcher.)"""

from __future__ import annotations

import argparse

from textebm.arguments import check_seed
from textebm.config import MAX_DECODE_LENGTH
from textebm.errors import UserError


def seed_type(text: str) -> int:
    """The type of every `--seed`: the library's `check_seed`, applied as the command line is read (a seed out
    of range failed inside torch, after the work had begun)."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_option(flag: str, value: int, least: int, most: int) -> int:
    """An integer option within its bounds: a value past the upper one ran out of memory with a traceback, or
    ran for hours without a word (10**12 chain steps, 10**11 chains)."""
    if not least <= value <= most:
        raise UserError(f"{flag} must be from {least} to {most}, not {value}")
    return value


def check_decode_length(value: int) -> int:
    """Every decoding command's `--max-length`: from 1 to MAX_DECODE_LENGTH."""
    return check_option("--max-length", value, 1, MAX_DECODE_LENGTH)


def path_type(text: str) -> str:
    """The type of every option that names a path (`--out`, `--plot`, `--rppl-out`, `--data-dir`): an empty
    one (`--data-dir "$UNSET"`) would read as the option left out (stdout, a default place), so it is refused."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, not an empty string")
    return text


def add_data_dir_argument(parser, of_a_run: bool = False) -> None:
    """`--data-dir`, the folder of the corpora; for a command on a trained run (`of_a_run`) the files the
    run recorded come first when it is not given (textebm.data.corpora.open_run_corpus)."""
    default = ("the files the run recorded in its corpus.json, where they still are; else $TEXTEBM_DATA_DIR, else "
               "data/" if of_a_run else "$TEXTEBM_DATA_DIR, else data/")
    parser.add_argument("--data-dir", metavar="D", type=path_type, help=f"folder of the corpora (default: {default})")


def add_chain_argument(parser) -> None:
    """`--set KEY=VALUE` for the chain settings of a trained run (textebm.config.CHAIN_KEYS)."""
    parser.add_argument("--set", dest="chain", action="append", default=[], metavar="KEY=VALUE",
                        help="run the Langevin chains with other settings than the run trained with, e.g. "
                             "--set posterior_noise=1 (chain keys only: prior_steps, prior_step_size, prior_noise, "
                             "posterior_steps, posterior_step_size, posterior_step_schedule, "
                             "posterior_step_size_end, posterior_noise, chain_precision; repeatable)")


def read_sentences(path: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file (.gz allowed), read as the corpora are; a clear UserError otherwise."""
    from pathlib import Path

    from textebm.data.corpora import read_lines

    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    return [line.strip() for line in read_lines(file)]


def load_latent_run(folder: str, device_name: str, threads: int | None, command: str, chain: list[str] = (),
                    tf32: bool = True):
    """A run for a command about its latent space; a run trained with prior=none has none."""
    from textebm.devices import resolve_device
    from textebm.model.runs import load_run

    loaded = load_run(folder, resolve_device(device_name, threads, tf32), chain)
    if not loaded.model.has_latent:
        raise UserError(f"{folder} was trained with prior=none (a language model without a latent), so it has "
                        f"no latent space for {command} to explore")
    return loaded


def add_protocol_arguments(parser, generates: bool):
    """The options of wKL and the neural reverse perplexity (textebm/evaluation/protocol_metrics.py), shared by
    `eval-ppl` (a samples file) and `evaluate` (which generates the sentences: `generates`). Returns their
    group, for options that only these metrics use."""
    from textebm.evaluation.protocol_metrics import PROTOCOL_EPOCHS, PROTOCOL_TRAIN, PROTOCOL_VALID

    group = parser.add_argument_group(
        "the later papers' metrics (DGMVAE's protocol; docs/fppl-rppl.md)",
        "wKL and the reverse perplexity under a neural LM trained on generated sentences, as Shi et al. 2020, "
        "Pang & Wu 2021 and Yu et al. 2022 report them; not comparable with the KenLM RPPL")
    source = "generated" if generates else "the samples file's first"
    group.add_argument("--wkl", action="store_true",
                       help=f"word-frequency KL of {source} --synthetic-train sentences against the real training text")
    group.add_argument("--neural-rppl", action="store_true",
                       help="reverse perplexity: the real test text under the toolkit's plain LSTM LM (prior=none) "
                            "trained on --synthetic-train generated sentences, validated on --synthetic-valid more")
    group.add_argument("--synthetic-train", type=int, default=PROTOCOL_TRAIN, metavar="N",
                       help=f"generated sentences the reverse LM trains on and wKL reads (default {PROTOCOL_TRAIN})")
    group.add_argument("--synthetic-valid", type=int, default=PROTOCOL_VALID, metavar="N",
                       help=f"the next generated sentences: the reverse LM's validation set (default {PROTOCOL_VALID})")
    if generates:
        group.add_argument("--synthetic-temperature", type=float, default=1.0, metavar="T",
                           help="sampling temperature of the generated sentences (default 1: the model's own law)")
    group.add_argument("--rppl-epochs", type=int, default=PROTOCOL_EPOCHS, metavar="E",
                       help=f"epochs of the reverse LM; the best by validation is kept (default {PROTOCOL_EPOCHS})")
    group.add_argument("--rppl-steps", type=int, metavar="N", help="stop the reverse LM after N steps")
    group.add_argument("--rppl-minutes", type=float, metavar="M",
                       help="stop the reverse LM's training after M minutes (wall clock)")
    group.add_argument("--rppl-preset", metavar="NAME",
                       help="config preset of the reverse LM (default: as textebm train picks, cpu on a CPU)")
    group.add_argument("--rppl-set", action="append", default=[], metavar="KEY=VALUE",
                       help="reverse LM config, e.g. --rppl-set hidden_dim=512 (repeatable)")
    group.add_argument("--rppl-out", type=path_type, metavar="DIR",
                       help="keep the reverse LM's run folder here (default: removed)")
    return group


def protocol_options(args):
    """The ProtocolOptions of `add_protocol_arguments`' flags."""
    from textebm.evaluation.protocol_metrics import ProtocolOptions

    return ProtocolOptions(wkl=args.wkl, neural_rppl=args.neural_rppl, synthetic_train=args.synthetic_train,
                           synthetic_valid=args.synthetic_valid,
                           temperature=getattr(args, "synthetic_temperature", 1.0), epochs=args.rppl_epochs,
                           max_steps=args.rppl_steps, max_minutes=args.rppl_minutes, preset=args.rppl_preset,
                           overrides=list(args.rppl_set), keep=args.rppl_out)


def cell(x) -> str:
    """A table cell: four significant figures below 10, two decimals above; n/a for None."""
    return "n/a" if x is None else f"{x:.4g}" if abs(x) < 10 else f"{x:.2f}"


def protocol_rows(result: dict) -> list[tuple[str, str]]:
    """Table rows of wKL and the neural reverse perplexity, when the result has them."""
    rows = []
    if "wkl" in result:
        w = result["wkl"]
        rows.append((f"wKL vs real train ({w['sentences']} sentences; unseen words skipped)",
                     f"{w['value']:.4f} ({w['skipped_share']:.2%} of tokens skipped)"))
    if "neural_reverse_ppl" in result:
        r, lm = result["neural_reverse_ppl"], result["neural_reverse_ppl"]["lm"]
        rows += [
            (f"neural rPPL (real test | LSTM LM of {r['train_sentences']} + {r['valid_sentences']} generated)",
             f"{cell(r['ppl'])} (valid {cell(r['valid_ppl'])})"),
            ("  reverse LM", f"{lm['cell']} {lm['embedding_dim']}/{lm['hidden_dim']}, {lm['parameters'] / 1e6:.2f}M "
                             f"parameters, epoch {r['chosen_epoch']:.3g} of {r['epochs_trained']:.3g} "
                             f"({r['stopped_by']}), {r['seconds']:.0f} s"),
        ]
    if "protocol" in result and not result["protocol"]["matches_protocol_sizes"]:
        rows.append(("  generated sentences", f"{result['protocol']['synthetic_sentences']} (DGMVAE's: 40000 + 3000)"))
    return rows
