"""KenLM-based evaluation of generated text: forward/reverse perplexity, sample statistics, wKL.

A top-level package of the textebm project (`textebm eval-ppl` is its command line). The name
collides with EleutherAI's lm-evaluation-harness, which also installs `lm_eval`; `__textebm__`
lets textebm check that `import lm_eval` found this package.

    from lm_eval import evaluate_samples
    result = evaluate_samples("samples.txt", "data/ptb/train.txt", "data/ptb/test.txt")

The public names are imported on first use (PEP 562), so that `python -m lm_eval.kenlm_tools`
runs its module without importing it twice.
"""

from __future__ import annotations

import importlib

__textebm__ = True

_EXPORTS = {
    "lm_eval.bleu": ["corpus_bleu", "sentence_bleu"],
    "lm_eval.errors": ["EstimationError", "EvalError", "InputError", "KenLMToolsMissing"],
    "lm_eval.evaluate": ["ReversePPL", "evaluate_sample_sets", "evaluate_samples",
                         "forward_ppl", "reverse_ppl"],
    "lm_eval.kenlm_tools": ["KenLMTools", "find_tools"],
    "lm_eval.ngram": ["NgramLM", "load_model", "real_data_lm", "train_ngram_lm"],
    "lm_eval.scoring": ["Perplexity", "perplexity"],
    "lm_eval.sample_statistics": ["distinct_n", "sample_stats", "self_bleu"],
    "lm_eval.text": ["Sentences", "normalize_lines", "read_sentences"],
    "lm_eval.word_frequencies": ["WordKL", "word_counts", "word_kl"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lm_eval' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
