"""KenLM-based evaluation of generated text: forward/reverse perplexity and sample statistics.

A top-level package of the textebm project (`textebm eval-ppl` is its command line). The name
collides with EleutherAI's lm-evaluation-harness, which also installs `lm_eval`; `__textebm__`
lets textebm check that `import lm_eval` found this package.

    from lm_eval import evaluate_samples
    result = evaluate_samples("samples.txt", "data/ptb/train.txt", "data/ptb/test.txt")
"""

__textebm__ = True

from lm_eval.errors import EstimationError, EvalError, InputError, KenLMToolsMissing
from lm_eval.evaluate import ReversePPL, corpus_split_path, evaluate_samples, forward_ppl, reverse_ppl
from lm_eval.kenlm_tools import KenLMTools, find_tools
from lm_eval.ngram import NgramLM, load_model, real_data_lm, train_ngram_lm
from lm_eval.perplexity import Perplexity, perplexity
from lm_eval.sample_stats import distinct_n, sample_stats, self_bleu
from lm_eval.text import Sentences, read_sentences

__all__ = [
    "EstimationError", "EvalError", "InputError", "KenLMToolsMissing", "KenLMTools", "NgramLM",
    "Perplexity", "ReversePPL", "Sentences", "corpus_split_path", "distinct_n", "evaluate_samples",
    "find_tools", "forward_ppl", "load_model", "perplexity", "read_sentences", "real_data_lm",
    "reverse_ppl", "sample_stats", "self_bleu", "train_ngram_lm",
]
