"""The generation metrics of the later papers of this line: wKL and the neural reverse perplexity.

Shi et al. 2020 (DGMVAE), and after them Pang & Wu 2021 (symbol-vector coupling) and Yu et al.
2022 (latent diffusion EBMs), report generated text on PTB by

  - rPPL: a neural language model trained on 40,000 generated sentences, with 3,000 more
    generated sentences as its validation set, then scored on the real test split;
  - wKL: the word-frequency KL of those 40,000 sentences against the real training text
    (lm_eval/word_frequencies.py).

Here the reverse LM is the toolkit's own plain LSTM language model (`prior=none`), trained by the
library's `textebm.training.train.train`, one epoch per call, keeping the weights of the epoch with the
best validation perplexity (DGMVAE's third-party LM keeps its best-validation model too). Its
vocabulary is every word of the generated training and validation sentences and of the real test
text (the rule of the LM DGMVAE used): test words the generator never produced are in it but were
never a training target, so they cost a lot, which is what makes a mode-collapsed generator's
rPPL high. Each test sentence is scored on its own from `<s>`, its `</s>` counted:
ppl = exp(sum of NLL / (words + sentences)).

KenLM's reverse perplexity (`lm_eval`, ARAE's protocol) is another number on another scale: the
two are not comparable with each other (docs/fppl-rppl.md).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from textebm.config import MAX_SAMPLES
from textebm.errors import UserError
from textebm.io import check_writable
from textebm.progress import QUIET, Progress

PROTOCOL_TRAIN, PROTOCOL_VALID = 40_000, 3_000  # DGMVAE's split of its generated sentences
PROTOCOL_EPOCHS = 20  # the epochs of DGMVAE's reverse-LM command
# Config keys the reverse LM fixes: it is a plain word-level LM with the vocabulary described above.
FIXED_KEYS = ("model", "prior", "corpus", "tokenizer", "vocab_size", "min_freq", "lowercase", "train_split")
LM_DEFAULTS = ["valid_every=0", "valid_batches=0", "checkpoint_every=1000000000"]  # validate each epoch on it all
SCORE_TOKENS = 4_096  # padded test tokens scored together (memory: tokens x vocabulary logits)
PPL_CONVENTION = ("exp(sum over the real test sentences of -ln p(sentence) / (words + one end-of-sentence per "
                  "sentence)); each sentence scored on its own from <s>, its </s> counted")
VOCABULARY = ("every word of the generated training and validation sentences and of the real test text (the rule "
              "of DGMVAE's reverse LM); test words the generator never produced are in it but never trained on")


@dataclass
class ProtocolOptions:
    """wKL and the neural reverse perplexity: which, on how many generated sentences, and the LM's budget."""

    wkl: bool = False
    neural_rppl: bool = False
    synthetic_train: int = PROTOCOL_TRAIN  # generated sentences the reverse LM trains on (wKL's generated side)
    synthetic_valid: int = PROTOCOL_VALID  # the next ones: the reverse LM's validation set
    temperature: float = 1.0  # `evaluate`: the sampling temperature of the sentences it generates
    epochs: int = PROTOCOL_EPOCHS
    max_steps: int | None = None  # a cap on the reverse LM's training steps
    max_minutes: float | None = None  # a cap on its training's wall-clock minutes
    preset: str | None = None  # None: as `textebm train` chooses by device (cpu on a CPU)
    overrides: list[str] = field(default_factory=list)  # `key=value` config of the reverse LM
    keep: str | None = None  # a folder to keep the reverse LM's run in (default: a temporary one)

    @property
    def wanted(self) -> bool:
        return self.wkl or self.neural_rppl

    @property
    def needed(self) -> int:
        """Generated sentences the asked metrics use."""
        return self.synthetic_train + (self.synthetic_valid if self.neural_rppl else 0)

    @property
    def matches_protocol(self) -> bool:
        valid_ok = not self.neural_rppl or self.synthetic_valid == PROTOCOL_VALID
        return self.synthetic_train == PROTOCOL_TRAIN and valid_ok

    def check(self) -> ProtocolOptions:
        from textebm.config import parse_override

        for flag, value in (("--synthetic-train", self.synthetic_train), ("--synthetic-valid", self.synthetic_valid),
                            ("--rppl-epochs", self.epochs)):
            if not 1 <= value <= MAX_SAMPLES:
                raise UserError(f"{flag} must be from 1 to {MAX_SAMPLES:,}, not {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--rppl-steps must be at least 1, not {self.max_steps}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise UserError(f"--rppl-minutes must be a positive number, not {self.max_minutes}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"--synthetic-temperature must be a positive number, not {self.temperature}")
        try:
            for item in self.overrides:
                key, _ = parse_override(item)
                if key in FIXED_KEYS:
                    raise UserError(f"--rppl-set {key}: the reverse LM is a plain word-level LSTM LM (prior=none) "
                                    f"whose vocabulary the protocol fixes; {', '.join(FIXED_KEYS)} cannot change")
            reverse_lm_config(self, "samples", on_cuda=False)  # values and preset checked before any work
        except UserError as err:
            raise UserError(str(err).replace("--set ", "--rppl-set ").replace("--preset", "--rppl-preset")) from None
        if self.keep is not None and check_writable(self.keep, folder=True).is_dir() and any(Path(self.keep).iterdir()):
            raise UserError(f"--rppl-out {self.keep} exists and is not empty: name a new folder")
        return self

    def check_count(self, available: int, what: str) -> None:
        """Enough generated sentences for the neural rPPL (wKL takes what there is)."""
        if self.neural_rppl and available < self.needed:
            raise UserError(f"the neural reverse perplexity needs {self.needed} {what} ({self.synthetic_train} to "
                            f"train the LM, {self.synthetic_valid} to validate it), there are {available}: give "
                            "more, or fewer with --synthetic-train/--synthetic-valid")


def protocol_metrics(synthetic: list[str], train_lines: list[str], test_lines: list[str], options: ProtocolOptions,
                     device=None, corpus: str = "samples", progress: Progress = QUIET) -> dict:
    """wKL and/or the neural reverse perplexity of generated sentences, JSON-ready.

    The first `synthetic_train` sentences are wKL's generated side and the reverse LM's training
    text, the next `synthetic_valid` its validation text; `train_lines` is the real training text
    (wKL's reference) and `test_lines` the real text the reverse LM is scored on."""
    options.check()
    options.check_count(len(synthetic), "generated sentences")
    train_part = synthetic[:options.synthetic_train]  # wKL alone takes fewer when fewer were given
    valid_part = synthetic[options.synthetic_train:options.needed]
    sizes = f"{len(train_part)} + {len(valid_part)}" if options.neural_rppl else str(len(train_part))
    out: dict = {"protocol": {
        "follows": "DGMVAE (Shi et al. 2020), as Pang & Wu 2021 and Yu et al. 2022 report it",
        "synthetic_sentences": sizes,
        "matches_protocol_sizes": options.matches_protocol and len(train_part) == options.synthetic_train,
    }}
    if options.wkl:
        from lm_eval.errors import EvalError
        from lm_eval.word_frequencies import word_kl

        try:
            figures = word_kl(train_part, train_lines).as_dict()
        except EvalError as err:  # e.g. only empty generated sentences
            raise UserError(str(err)) from None
        out["wkl"] = {"value": figures.pop("kl"), "sentences": len(train_part), **figures,
                      "definition": "sum over words seen in both of q(w) ln(q(w)/p(w)), q the generated text's word "
                                    "frequencies, p the real training text's; generated words unseen in training "
                                    "skipped (q not renormalised); nats"}
    if options.neural_rppl:
        out["neural_reverse_ppl"] = neural_reverse_ppl(train_part, valid_part, test_lines, options, device, corpus,
                                                       progress)
    return out


def reverse_lm_config(options: ProtocolOptions, corpus: str, on_cuda: bool):
    """The reverse LM's config: the preset `textebm train` would take here, its `--rppl-set` changes,
    and prior=none."""
    from textebm.config import device_preset, resolve_config

    preset = options.preset or device_preset(corpus, on_cuda)[0]
    config = resolve_config(preset, corpus, [*LM_DEFAULTS, *options.overrides, "prior=none"])
    config.max_epochs = options.epochs
    return config


def neural_reverse_ppl(train_sentences: list[str], valid_sentences: list[str], test_lines: list[str],
                       options: ProtocolOptions, device=None, corpus: str = "samples",
                       progress: Progress = QUIET) -> dict:
    """Train the plain LSTM LM on generated sentences (best epoch by validation), score real text."""
    import torch

    from textebm.data.batches import encode_lines
    from textebm.data.vocab import WordVocab
    from textebm.model.runs import build_model, create_run

    started = time.perf_counter()
    device = torch.device(device or "cpu")
    test = [line for line in test_lines if line.split()]
    if not test:
        raise UserError("the neural reverse perplexity needs real test text: the test lines are all blank")
    config = reverse_lm_config(options, corpus, device.type == "cuda")
    vocab = WordVocab.build([*train_sentences, *valid_sentences, *test])
    train_split = encode_lines(train_sentences, vocab, config.max_length)
    valid_split = encode_lines(valid_sentences, vocab, config.max_length)
    torch.manual_seed(config.seed)
    model = build_model(config, vocab).to(device)
    progress.note(f"neural rPPL: an LM ({config.cell.upper()} {config.embedding_dim}/{config.hidden_dim}, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, preset {config.preset}) on "
                  f"{len(train_sentences)} generated sentences, validated on {len(valid_sentences)}, up to "
                  f"{options.epochs} epochs" + (f" / {options.max_steps} steps" if options.max_steps else "")
                  + (f" / {options.max_minutes:g} minutes" if options.max_minutes else ""))
    with _run_folder(options.keep) as folder:
        create_run(folder, config, vocab)
        fit = _train_best_epoch(model, config, train_split, valid_split, folder, vocab, device, options, progress)
    model.load_state_dict(fit.state)
    nll, tokens = lm_nll_of_lines(model, vocab, test)
    seen = {w for s in train_sentences for w in s.split()}
    test_words = [w for s in test for w in s.split()]
    per_epoch = math.ceil(len(train_split.sentences) / config.batch_size)
    return {
        "ppl": math.exp(nll / tokens), "nll_per_token": nll / tokens, "convention": PPL_CONVENTION,
        "test_sentences": len(test), "test_tokens": tokens,
        "test_words_unseen_in_synthetic": sum(w not in seen for w in test_words) / len(test_words),
        "valid_ppl": math.exp(fit.valid_nll), "chosen_step": fit.step, "chosen_epoch": fit.step / per_epoch,
        "steps": fit.last_step, "epochs_trained": fit.last_step / per_epoch, "stopped_by": fit.stopped_by,
        "train_sentences": len(train_sentences), "valid_sentences": len(valid_sentences),
        "truncated_synthetic_lines": train_split.truncated + valid_split.truncated,
        "lm": {"preset": config.preset, "cell": config.cell, "num_layers": config.num_layers,
               "embedding_dim": config.embedding_dim, "hidden_dim": config.hidden_dim, "dropout": config.dropout,
               "batch_size": config.batch_size, "learning_rate": config.generator_lr, "max_length": config.max_length,
               "seed": config.seed, "parameters": sum(p.numel() for p in model.parameters()),
               "vocabulary_size": len(vocab), "device": str(device)},
        "vocabulary": VOCABULARY,
        "run_folder": options.keep,
        "seconds": round(time.perf_counter() - started, 2),
    }


@contextlib.contextmanager
def _run_folder(keep: str | None):
    if keep is not None:
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="textebm-reverse-lm-") as tmp:
        yield Path(tmp)


@dataclass
class _Fit:
    state: dict  # the chosen weights
    step: int  # ... and the step they are from
    valid_nll: float  # their validation NLL per token
    last_step: int = 0
    stopped_by: str = ""  # epochs | max_steps | max_minutes


def _train_best_epoch(model, config, train_split, valid_split, folder: Path, vocab, device,
                      options: ProtocolOptions, progress: Progress) -> _Fit:
    """`textebm.training.train.train` one epoch per call (resuming its own checkpoint), validating at every
    epoch's end; the weights of the best validation NLL are kept."""
    from textebm.training.train import train

    per_epoch = math.ceil(len(train_split.sentences) / config.batch_size)
    limit = options.epochs * per_epoch
    if options.max_steps is not None:
        limit = min(limit, options.max_steps)
    stopped_by = "max_steps" if limit < options.epochs * per_epoch else "epochs"
    deadline = None if options.max_minutes is None else time.monotonic() + 60 * options.max_minutes
    best, step = None, 0
    with progress.bar("reverse LM", limit, "step") as bar:
        while step < limit:
            minutes = None if deadline is None else (deadline - time.monotonic()) / 60
            if minutes is not None and minutes <= 0 and best is not None:
                stopped_by = "max_minutes"
                break
            target = min(limit, (step // per_epoch + 1) * per_epoch)
            result = train(model, config, train_split, valid_split, folder, vocab, device, max_steps=target,
                           max_minutes=None if minutes is None else max(minutes, 1e-6), resume=step > 0,
                           progress=False, echo=lambda text: None)
            bar.update(result.step - step)
            step = result.step
            valid = result.last_validation.get("valid_nll_posterior")
            if valid is not None and math.isfinite(valid) and (best is None or valid < best.valid_nll):
                best = _Fit({k: v.detach().clone() for k, v in model.state_dict().items()}, step, valid)
            if result.stopped_by == "interrupt":
                raise KeyboardInterrupt
            if result.stopped_by == "max_minutes":
                stopped_by = "max_minutes"
                break
    if best is None:
        raise UserError("the reverse LM never validated to a finite perplexity (non-finite losses): try "
                        "--rppl-set generator_lr=... lower")
    best.last_step, best.stopped_by = step, stopped_by
    return best


def lm_nll_of_lines(model, vocab, lines: list[str]) -> tuple[float, int]:
    """Total NLL (nats) of sentences under a plain LM, each from `<s>` with its `</s>`, none cut; and
    the number of predicted tokens (words + one end-of-sentence each)."""
    import torch

    from textebm.data.batches import encode_lines, pad

    encoded = encode_lines(lines, vocab, max(len(line.split()) for line in lines)).sentences
    batches, current = [], []
    for sentence in sorted(encoded, key=len):  # ascending: a batch is as wide as its last sentence
        if current and (len(current) + 1) * len(sentence) > SCORE_TOKENS:
            batches.append(current)
            current = []
        current.append(sentence)
    batches.append(current)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            tokens = pad(batch, vocab.pad_id).to(model.device)
            z = torch.zeros(len(batch), 0, device=model.device)
            total -= float(model.decoder.log_likelihood(z, tokens).double().sum())
    return total, sum(len(s) - 1 for s in encoded)
