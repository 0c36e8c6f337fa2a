"""`textebm eval-ppl`: forward and reverse perplexity of generated sentences with KenLM 5-grams, and
on request wKL and the neural reverse perplexity of the later papers (textebm/evaluation/protocol_metrics.py).

Thin: resolves the real train/test files, calls `lm_eval.evaluate_samples` (and
`protocol_metrics`), prints a table or one JSON object. The protocols are documented in
docs/fppl-rppl.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from textebm.cli.common import (
    add_data_dir_argument,
    add_protocol_arguments,
    protocol_options,
    protocol_rows,
    seed_type,
)
from textebm.data.corpora import KNOWN
from textebm.devices import add_device_argument
from textebm.errors import UserError
from textebm.evaluation.decoding_sweep import import_lm_eval
from textebm.io import json_safe
from textebm.progress import add_progress_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval-ppl",
        help="forward/reverse perplexity of samples under KenLM n-gram models",
        description="Forward perplexity (samples under an LM of the real training text) and reverse "
        "perplexity (real test text under an LM of the samples), with KenLM modified Kneser-Ney "
        "n-grams, plus sample statistics (length, unique/copied share, distinct-n, self-BLEU); with --wkl and "
        "--neural-rppl also DGMVAE's word-frequency KL and reverse perplexity under a neural LM.",
    )
    p.add_argument("--samples", required=True, metavar="FILE", help="generated sentences, one per line")
    p.add_argument("--corpus", choices=KNOWN, help="real corpus: DATA_DIR/<corpus>/{train,test}.txt")
    add_data_dir_argument(p)
    p.add_argument("--train", metavar="REAL_TRAIN", help="real training text (overrides the corpus's)")
    p.add_argument("--test", metavar="REAL_TEST", help="real test text (overrides the corpus's)")
    p.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    p.add_argument("--count-eos", action="store_true",
                   help="count the end-of-sentence token in perplexity (default: not counted, as in ARAE)")
    p.add_argument("--no-train-vocab", dest="train_vocab", action="store_false",
                   help="do not add one line per real training word to the reverse LM's text")
    p.add_argument("--memory", default="1G", help="lmplz memory bound, its -S option (default 1G)")
    p.add_argument("--self-bleu-size", type=int, default=None, metavar="N",
                   help="sentences in the self-BLEU subsample (default 200)")
    p.add_argument("--seed", type=seed_type, default=None, help="seed of the self-BLEU subsample (default 1234)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="longest line accepted, in tokens (default 10000)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    # the KenLM metrics run on the CPU in lmplz and build_binary: device, threads and the progress bars
    # are the neural reverse LM's, so they are listed with its options
    neural = add_protocol_arguments(p, generates=False)
    add_device_argument(neural)
    add_progress_argument(neural)
    p.set_defaults(run=run)


def resolve_files(args) -> tuple[Path, Path]:
    """The real train and test files, from --train/--test or from --corpus and the data folder
    (`textebm.data.corpora`: DATA_DIR/<corpus>/<split>.txt or .txt.gz)."""
    from textebm.data.corpora import data_dir, split_file

    if args.corpus is None and (args.train is None or args.test is None):
        raise UserError("give --corpus ptb|snli|yahoo, or both --train REAL_TRAIN and --test REAL_TEST")

    def corpus_file(split: str, flag: str) -> Path:
        folder = data_dir(args.data_dir) / args.corpus
        path = split_file(folder, split)
        if path is not None:
            return path
        if not folder.is_dir():
            raise UserError(f"corpus folder not found: {folder}: set --data-dir or $TEXTEBM_DATA_DIR to the folder "
                            f"that holds {args.corpus}/, or fetch it with textebm data --fetch {args.corpus} (or "
                            f"give your own with {flag} FILE)")
        raise UserError(f"corpus {args.corpus} has no {split} split: {folder / (split + '.txt')} is missing (give "
                        f"your own with {flag} FILE)")

    train = Path(args.train) if args.train else corpus_file("train", "--train")
    test = Path(args.test) if args.test else corpus_file("test", "--test")
    return train, test


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{100 * x:.2f}%" if pct else f"{x:.4g}" if abs(x) < 1 else f"{x:.2f}"


def format_table(r: dict) -> str:
    fb = r["discount_fallback_detail"]
    oov = r["oov_rate"]
    eos = "counted" if r["count_eos"] else "not counted"
    rows = [
        ("forward PPL (samples | real LM)", _fmt(r["forward_ppl"])),
        ("reverse PPL (test | samples LM)", _fmt(r["reverse_ppl"])),
        ("real LM PPL on test (reference)", _fmt(r["real_lm_test_ppl"])),
        ("order / end-of-sentence", f"{r['order']} / {eos}"),
        ("discount fallback (real / reverse)", f"{_fmt(fb['real_lm'])} / {_fmt(fb['reverse_lm'])}"),
        ("OOV samples | real LM", _fmt(oov["samples_under_real_lm"], True)),
        ("OOV test | real LM", _fmt(oov["test_under_real_lm"], True)),
        ("OOV test | reverse LM", _fmt(oov["test_under_reverse_lm"], True)),
        ("samples (blank lines dropped)", f"{r['num_samples']} ({r['blank_lines']['samples']})"),
        ("mean / max length", f"{r['mean_length']:.2f} / {r['max_length']}"),
        ("unique / copied from train", f"{_fmt(r['unique_share'], True)} / {_fmt(r['copied_share'], True)}"),
        ("distinct-1 / 2 / 3", " / ".join(_fmt(r[f"distinct_{n}"]) for n in (1, 2, 3))),
        (f"self-BLEU ({r['self_bleu_subsample']['size']} sentences, seed "
         f"{r['self_bleu_subsample']['seed']})", _fmt(r["self_bleu"])),
    ]
    rows += protocol_rows(r)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if r["discount_fallback"]:
        lines.append("note: lmplz needed --discount_fallback (too few distinct n-gram counts, "
                     "e.g. repeated samples); that model's smoothing is approximate")
    if r["marker_tokens"]:
        found = ", ".join(f"{token} x{count}" for token, count in r["marker_tokens"].items())
        lines.append(f"note: the samples hold sentence markers ({found}), scored as words; they raise the "
                     "forward PPL: strip them if the generator wrote them")
    if oov["test_under_reverse_lm"] > 0:
        lines.append("note: test words missing from the reverse LM are scored with its <unk> "
                     "probability, which makes the reverse PPL low and not comparable")
    return "\n".join(lines)


def run(args) -> int:
    lm_eval = import_lm_eval()
    from lm_eval.sample_statistics import SELF_BLEU_SEED, SELF_BLEU_SIZE
    from lm_eval.text import DEFAULT_MAX_TOKENS

    if args.self_bleu_size is not None and args.self_bleu_size < 0:
        raise UserError("--self-bleu-size must be 0 or more")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    protocol = protocol_options(args).check()
    device = None
    if protocol.neural_rppl:
        from textebm.devices import resolve_device

        device = resolve_device(args.device, args.threads)
    max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
    try:
        train, test = resolve_files(args)
        texts = protocol_texts(lm_eval, protocol, args.samples, train, test, max_tokens)  # bad input fails early
        result = lm_eval.evaluate_samples(
            args.samples, train, test, order=args.order, count_eos=args.count_eos,
            add_train_vocab=args.train_vocab, memory=args.memory,
            self_bleu_size=SELF_BLEU_SIZE if args.self_bleu_size is None else args.self_bleu_size,
            seed=SELF_BLEU_SEED if args.seed is None else args.seed, max_tokens=max_tokens,
        )
    except lm_eval.EvalError as err:
        raise UserError(str(err)) from None
    if texts is not None:
        from textebm.evaluation.protocol_metrics import protocol_metrics
        from textebm.progress import Progress

        result.update(protocol_metrics(*texts, protocol, device, args.corpus or "samples",
                                       Progress.auto(args.progress)))
    if args.json:
        sys.stdout.write(json.dumps(json_safe(result), allow_nan=False) + "\n")
    else:
        print(format_table(result))
    return 0


def protocol_texts(lm_eval, protocol, samples, train, test, max_tokens: int):
    """The samples, real training and real test sentences for wKL / the neural rPPL (None when not
    asked), read and counted before the KenLM work starts."""
    if not protocol.wanted:
        return None
    sentences = lm_eval.read_sentences(samples, "samples", max_tokens=max_tokens).sentences
    protocol.check_count(len(sentences), f"sentences in {samples}")
    return (sentences, lm_eval.read_sentences(train, "training", max_tokens=max_tokens).sentences,
            lm_eval.read_sentences(test, "test", max_tokens=max_tokens).sentences)
