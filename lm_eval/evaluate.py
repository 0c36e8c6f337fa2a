"""Forward and reverse perplexity of generated text, and the whole evaluation in one call.

Forward perplexity (FPPL): the samples under an LM estimated on real training text (fluency).
Reverse perplexity (RPPL): the real test text under an LM estimated on the samples (coverage;
a mode-collapsed generator gets a high RPPL). Following ARAE, the reverse LM's training text is
the samples plus one line per word of the real training vocabulary, so that no test word is out
of its vocabulary; `add_train_vocab=False` turns that off.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lm_eval.errors import EstimationError, InputError
from lm_eval.kenlm_tools import KenLMTools, find_tools
from lm_eval.ngram import (
    DEFAULT_MEMORY,
    DEFAULT_ORDER,
    NgramLM,
    kenlm_module,
    load_model,
    real_data_lm,
    train_ngram_lm,
    validate_memory,
    validate_order,
)
from lm_eval.sample_statistics import SELF_BLEU_SEED, SELF_BLEU_SIZE, sample_stats
from lm_eval.scoring import Perplexity, perplexity
from lm_eval.text import DEFAULT_MAX_TOKENS, Sentences, read_sentences, vocabulary


def _as_model(lm):
    if isinstance(lm, NgramLM):
        return lm.load()
    if isinstance(lm, (str, Path)):
        return load_model(lm)
    return lm


def _as_sentences(sentences, what: str) -> list[str]:
    """Normalised sentences from a list of them or a `Sentences`; a bare string would be read as characters."""
    if isinstance(sentences, Sentences):
        return sentences.sentences
    if isinstance(sentences, (str, bytes)):
        raise InputError(f"{what}: expected a list of sentences, got one string (read a file with read_sentences)")
    return list(sentences)


def forward_ppl(samples: list[str] | Sentences, lm, count_eos: bool = False) -> Perplexity:
    """FPPL: normalised sample sentences under a real-data LM (NgramLM, model path or kenlm.Model)."""
    return perplexity(_as_model(lm), _as_sentences(samples, "samples"), count_eos=count_eos)


@dataclass
class ReversePPL:
    test: Perplexity  # the real test text under the LM of the samples: RPPL is test.ppl
    discount_fallback: bool
    vocab_lines: int  # real-vocabulary lines added to the reverse LM's training text

    @property
    def ppl(self) -> float:
        return self.test.ppl


def reverse_ppl(samples: list[str] | Sentences, test: list[str] | Sentences, train_vocab: list[str] | None = None,
                order: int = DEFAULT_ORDER, count_eos: bool = False, memory: str = DEFAULT_MEMORY,
                tools: KenLMTools | None = None) -> ReversePPL:
    """RPPL: estimate an LM on samples (+ one line per word of `train_vocab`), score `test`.

    The reverse LM lives in a temporary folder that is removed before returning.
    """
    vocab = list(train_vocab or [])
    samples, test = _as_sentences(samples, "samples"), _as_sentences(test, "test text")
    with tempfile.TemporaryDirectory(prefix="textebm-reverse-") as tmp:
        lm = train_ngram_lm(samples + vocab, Path(tmp) / "reverse.klm", order=order, memory=memory, tools=tools,
                            role="the reverse LM of the samples")
        model = lm.load()
        result = ReversePPL(perplexity(model, test, count_eos), lm.discount_fallback, len(vocab))
        del model
    return result


def _real_model(train: list[str], order, memory, tools):
    """Load the cached real-data LM; a cached file that will not load is rebuilt once."""
    lm = real_data_lm(train, order=order, memory=memory, tools=tools)
    try:
        return lm, lm.load()
    except InputError:
        if not lm.cached:
            raise EstimationError(f"KenLM could not load the model it just built: {lm.path}") from None
        Path(lm.path).unlink(missing_ok=True)
        lm = real_data_lm(train, order=order, memory=memory, tools=tools)
        return lm, lm.load()


def evaluate_sample_sets(sample_sets: dict[str, Sentences], train: Sentences, test: Sentences,
                         order: int = DEFAULT_ORDER, count_eos: bool = False, add_train_vocab: bool = True,
                         memory: str = DEFAULT_MEMORY, self_bleu_size: int = SELF_BLEU_SIZE,
                         seed: int = SELF_BLEU_SEED) -> dict:
    """FPPL, RPPL, OOV rates and sample statistics of several sets of samples against one real-data LM.

    The real-data LM is loaded (estimated, the first time) once and the test text scored under it
    once, whatever the number of sets; each set gets its own reverse LM. Inputs are normalised
    sentences (`read_sentences` / `normalize_lines`). Returns {"real": {...}, "sets": {name: {...}}}."""
    validate_order(order)
    validate_memory(memory)
    tools = find_tools()  # fail early, before any work, when KenLM is missing
    kenlm_module()
    for name, samples in sample_sets.items():
        if not samples.sentences:
            raise InputError(f"sample set {name!r} has no sentences")
    # The sample statistics (self-BLEU is the slow part) are pure Python; they run in a thread
    # while this one mostly waits for lmplz and build_binary, which are subprocesses. An error or a
    # Ctrl-C here stops them at their next sentence instead of waiting for every set's self-BLEU.
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        train_set = set(train.sentences)
        stats_jobs = {name: pool.submit(sample_stats, samples.sentences, train_set, self_bleu_size, seed, stop)
                      for name, samples in sample_sets.items()}
        real_lm, real_model = _real_model(train.sentences, order, memory, tools)
        real_test = perplexity(real_model, test.sentences, count_eos)
        forward = {name: perplexity(real_model, samples.sentences, count_eos) for name, samples in sample_sets.items()}
        del real_model
        vocab = vocabulary(train.sentences) if add_train_vocab else []
        sets = {}
        for name, samples in sample_sets.items():
            rev = reverse_ppl(samples.sentences, test.sentences, vocab, order=order, count_eos=count_eos,
                              memory=memory, tools=tools)
            fwd = forward[name]
            sets[name] = {
                "forward_ppl": fwd.ppl,
                "reverse_ppl": rev.ppl,
                "num_samples": len(samples),
                "blank_lines": samples.blank_lines,
                "discount_fallback": rev.discount_fallback,
                "oov_rate": {"samples_under_real_lm": fwd.oov_rate, "test_under_reverse_lm": rev.test.oov_rate},
                "num_words": fwd.num_words,
                "reverse_lm_vocab_lines": rev.vocab_lines,
                **stats_jobs[name].result(),
            }
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
    real = {"path": real_lm.path, "cached": real_lm.cached, "num_sentences": real_lm.num_sentences,
            "discount_fallback": real_lm.discount_fallback, "test_ppl": real_test.ppl,
            "test_oov_rate": real_test.oov_rate, "test_num_words": real_test.num_words,
            "test_blank_lines": test.blank_lines, "train_blank_lines": train.blank_lines}
    return {"order": order, "count_eos": count_eos, "reverse_lm_train_vocab": add_train_vocab, "real": real,
            "sets": sets}


def evaluate_samples(samples_path: str | Path, train_path: str | Path, test_path: str | Path,
                     order: int = DEFAULT_ORDER, count_eos: bool = False, add_train_vocab: bool = True,
                     memory: str = DEFAULT_MEMORY, self_bleu_size: int = SELF_BLEU_SIZE,
                     seed: int = SELF_BLEU_SEED, max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """FPPL, RPPL, OOV rates and sample statistics of a samples file, as one JSON-ready dict."""
    start = time.perf_counter()
    validate_order(order)
    validate_memory(memory)
    find_tools()  # fail early, before reading anything, when KenLM is missing
    kenlm_module()
    samples = read_sentences(samples_path, "samples", max_tokens=max_tokens)
    train = read_sentences(train_path, "training", max_tokens=max_tokens)
    test = read_sentences(test_path, "test", max_tokens=max_tokens)
    out = evaluate_sample_sets({"samples": samples}, train, test, order, count_eos, add_train_vocab, memory,
                               self_bleu_size, seed)
    real, result = out["real"], out["sets"]["samples"]
    oov = result.pop("oov_rate")
    return {
        "forward_ppl": result.pop("forward_ppl"),
        "reverse_ppl": result.pop("reverse_ppl"),
        "num_samples": result.pop("num_samples"),
        "order": order,
        "count_eos": count_eos,
        "discount_fallback": real["discount_fallback"] or result["discount_fallback"],
        "discount_fallback_detail": {"real_lm": real["discount_fallback"],
                                     "reverse_lm": result.pop("discount_fallback")},
        "oov_rate": {**oov, "test_under_real_lm": real["test_oov_rate"]},
        "real_lm_test_ppl": real["test_ppl"],
        "reverse_lm_train_vocab": add_train_vocab,
        "reverse_lm_vocab_lines": result.pop("reverse_lm_vocab_lines"),
        "blank_lines": {"samples": result.pop("blank_lines"), "train": train.blank_lines, "test": test.blank_lines},
        "num_words": {"samples": result.pop("num_words"), "test": real["test_num_words"]},
        **result,
        "real_lm": {"path": real["path"], "cached": real["cached"], "num_sentences": real["num_sentences"]},
        "files": {"samples": str(samples_path), "train": str(train_path), "test": str(test_path)},
        "seconds": round(time.perf_counter() - start, 3),
    }
