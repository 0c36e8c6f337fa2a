"""A run made ready to train, as `textebm train` makes it and a script can.

    run = new_run("runs/ptb-small", resolve_config("cpu", "ptb"))   # or resumed_run("runs/ptb-small")
    result = run.train("cpu", max_steps=1000)

A new run opens its corpus, builds the vocabulary from the training split and creates the run folder
(config, vocabulary, the corpus files' record); a resumed one reads them back and finds its corpus
where the record says. Either way the splits are encoded and the model built from the config's seed.
Under torchrun every process calls the same functions: rank 0 alone writes, the others follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from textebm.config import Config
from textebm.data.batches import EncodedSplit, encode_lines
from textebm.data.corpora import Corpus, open_corpus, open_run_corpus, record_of, training_splits
from textebm.data.vocab import Vocabulary, build_vocab, load_vocab
from textebm.devices import bf16_emulated
from textebm.errors import UserError
from textebm.model.latent_ebm import LatentEBMTextModel
from textebm.model.runs import build_model, create_run, is_run, load_config
from textebm.training.parallel import Parallel, check_rows_for_each
from textebm.training.train import TrainResult, train


@dataclass
class TrainingRun:
    """Everything `train` needs, and what to say of it (`summary`) before it starts."""

    folder: Path
    config: Config
    vocab: Vocabulary
    corpus: Corpus
    model: LatentEBMTextModel
    train_data: EncodedSplit
    valid_data: EncodedSplit
    valid_source: str
    resumed: bool
    warnings: list[str] = field(default_factory=list)  # e.g. a corpus file changed since the run began

    def summary(self, device, parallel: Parallel = Parallel()) -> list[str]:
        """The lines `textebm train` prints before the first step: data, model, parallelism, warnings."""
        config, model = self.config, self.model
        lines = [f"warning: {warning}" for warning in self.warnings]
        lines.append(f"corpus {self.corpus.name}: {len(self.train_data.sentences)} training sentences "
                     f"({config.train_split}), {len(self.valid_data.sentences)} validation sentences "
                     f"({self.valid_source}); vocabulary {len(self.vocab)}")
        if self.train_data.truncated or self.valid_data.truncated:
            lines.append(f"truncated to max_length={config.max_length} tokens: {self.train_data.truncated} training "
                         f"and {self.valid_data.truncated} validation lines")
        vae = ""
        if config.model == "vae":
            pretrain = f" after {config.ae_pretrain_steps} autoencoder steps" if config.ae_pretrain_steps else ""
            vae = (f"VAE (LSTM encoder q(z|x), free bits {config.free_bits:g} nats per dimension, KL weight "
                   f"annealed over {config.kl_anneal_steps} steps{pretrain}), ")
        params = sum(p.numel() for p in model.parameters())
        lines.append(f"model: {vae}{config.cell} {config.embedding_dim}/{config.hidden_dim}, latent "
                     f"{model.prior.latent_dim}, prior {config.prior}, {params / 1e6:.2f}M parameters, on "
                     f"{torch.device(device)}; run folder {self.folder}")
        if parallel.distributed:
            lines.append(f"data parallel: {parallel.world} process{'es' if parallel.world > 1 else ''}, "
                         f"global batch {config.batch_size}")
        if config.chain_precision == "bf16" and bf16_emulated(torch.device(device)):
            lines.append("warning: chain_precision=bf16 on a CPU without AVX-512: bf16 is emulated there, and the "
                         "chain runs many times slower than fp32 (docs/benchmarks.md); --set chain_precision=fp32 "
                         "is faster")
        return lines

    def train(self, device, max_steps: int | None = None, max_minutes: float | None = None,
              max_cpu_minutes: float | None = None, keep_at: tuple[float, ...] = (), progress: bool = True,
              echo=print, parallel: Parallel = Parallel()) -> TrainResult:
        """Train to the first limit reached (textebm.training.train.train). The learning curves are
        textebm.evaluation.plots.plot_learning_curves(run.folder)."""
        return train(self.model, self.config, self.train_data, self.valid_data, self.folder, self.vocab, device,
                     max_steps, max_minutes, self.resumed, progress=progress, echo=echo, parallel=parallel,
                     max_cpu_minutes=max_cpu_minutes, keep_at=keep_at)


def new_run(folder, config: Config, data_dir: str | None = None, device="cpu",
            parallel: Parallel = Parallel()) -> TrainingRun:
    """A new run of `config` in `folder` (which must not hold a run yet), on its corpus found in `data_dir`
    ($TEXTEBM_DATA_DIR, else data/, when None)."""
    folder = Path(folder)
    if parallel.broadcast(is_run(folder) if parallel.is_main else None):  # rank 0 decides, before it creates it
        raise UserError(f"{folder} already holds a run: continue it with --resume, or choose another --out")
    corpus = open_corpus(config.corpus, data_dir)
    train_lines, valid_lines, valid_source = training_splits(corpus, config.train_split)
    check_rows_for_each(config.batch_size, len(train_lines), parallel.world)
    failure = None  # rank 0 builds and saves the vocabulary; the others wait for it, then read it
    if parallel.is_main:
        try:
            create_run(folder, config, build_vocab(train_lines, config.tokenizer, config.vocab_size,
                                                   config.min_freq, config.lowercase), record_of(corpus))
        except (UserError, OSError) as err:
            failure = err
    reason = parallel.broadcast(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if reason is not None:
        raise UserError(f"rank 0 could not create the run folder: {reason}")
    return _ready(folder, config, load_vocab(folder), corpus, train_lines, valid_lines, valid_source, False, [],
                  device, parallel)


def resumed_run(folder, data_dir: str | None = None, device="cpu", parallel: Parallel = Parallel()) -> TrainingRun:
    """The run in `folder`, to continue from its last checkpoint (from step 0 when it has none), with its
    saved config, vocabulary and corpus (the files it recorded; `data_dir` overrides where they are)."""
    folder = Path(folder)
    config = load_config(folder)
    vocab = load_vocab(folder)
    corpus, warnings = open_run_corpus(folder, config.corpus, data_dir)
    train_lines, valid_lines, valid_source = training_splits(corpus, config.train_split)
    return _ready(folder, config, vocab, corpus, train_lines, valid_lines, valid_source, True, warnings, device,
                  parallel)


def _ready(folder: Path, config: Config, vocab, corpus: Corpus, train_lines: list[str], valid_lines: list[str],
           valid_source: str, resumed: bool, warnings: list[str], device, parallel: Parallel) -> TrainingRun:
    """The splits encoded and the model built from the config's seed (every process the same weights)."""
    train_data = encode_lines(train_lines, vocab, config.max_length)
    valid_data = encode_lines(valid_lines, vocab, config.max_length)
    torch.manual_seed(config.seed)
    model = build_model(config, vocab).to(device)
    if parallel.rank:  # dropout draws from this stream: each process its own masks, not a copy of rank 0's
        torch.manual_seed(config.seed + parallel.rank)
    return TrainingRun(folder, config, vocab, corpus, model, train_data, valid_data, valid_source, resumed, warnings)
