"""Reconstruction: each sentence's code by the model's own inference (`model.infer_code`), decoded
back greedily, and BLEU of the copies against the inputs: the quickest evidence that z carries
the sentence.

The baseline is the same BLEU for greedy decodings of prior samples, paired with the inputs in
order. A decoder that ignores z decodes one and the same sentence from every z, so its
reconstructions score exactly the baseline; a model whose z carries the sentence scores above it.

BLEU here: corpus BLEU as `lm_eval.bleu` computes it (nltk, 4-gram, uniform weights, smoothing
method 1), on words (the vocabulary's decoding split on whitespace), on a 0-100 scale. The
references are the inputs as the model sees them (through its vocabulary: unknown words become its
unknown token, lines are cut to the run's max_length): no decoder can produce more than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval.bleu import CONVENTION, corpus_bleu
from lm_eval.bleu import sentence_bleu as one_sentence_bleu
from textebm.arguments import check_chains, check_count, check_lines, check_seed, check_steps
from textebm.data.batches import encode_lines, pad
from textebm.errors import UserError
from textebm.generation.decoding import decode
from textebm.modes import eval_mode

BLEU_CONVENTION = (f"{CONVENTION}; corpus BLEU x 100, words split on whitespace; "
                   "references are the inputs through the run's vocabulary (unknown words as its unknown token, "
                   "lines cut to max_length)")
MARGIN = 1.0  # BLEU points above the baseline that count as z carrying the sentence


def bleu(references: list[str], hypotheses: list[str]) -> float:
    """Corpus BLEU (0-100) of `hypotheses` against one reference each, on whitespace-split words."""
    if not hypotheses:
        raise ValueError("BLEU needs at least one sentence")
    return 100.0 * corpus_bleu([[r.split()] for r in references], [h.split() for h in hypotheses])


def sentence_bleu(reference: str, hypothesis: str) -> float:
    """One sentence's BLEU (0-100), same convention as `bleu`."""
    return 100.0 * one_sentence_bleu([reference.split()], hypothesis.split())


def exact_share(references: list[str], hypotheses: list[str]) -> float:
    return sum(r.split() == h.split() for r, h in zip(references, hypotheses)) / len(references)


def comparison(score: float, baseline: float) -> str:
    """One sentence that says how the reconstruction BLEU compares with the prior-sample baseline."""
    head = f"reconstruction BLEU {score:.2f} vs {baseline:.2f} from prior samples ({score - baseline:+.2f})"
    if score > baseline + MARGIN:
        return f"{head}: above the baseline, z carries information about the sentence"
    return (f"{head}: no better than a decoder that ignores z (the decoder does not use z, or inference "
            "does not find the sentence's code)")


@dataclass
class Reconstruction:
    inputs: list[str]  # the sentences as the model sees them (through its vocabulary)
    outputs: list[str]  # greedy decodings of their inferred codes
    baseline: list[str]  # greedy decodings of prior samples, one per input
    truncated: int  # input lines cut to the run's max_length
    bleu: float
    exact_match: float
    baseline_bleu: float
    baseline_exact_match: float
    inference: str  # how the codes were found
    chains: int
    seed: int

    @property
    def verdict(self) -> str:
        return comparison(self.bleu, self.baseline_bleu)

    def summary(self) -> dict:
        """The figures, JSON-ready (no per-sentence rows)."""
        return {"num_sentences": len(self.inputs), "truncated_lines": self.truncated,
                "bleu": self.bleu, "exact_match": self.exact_match,
                "baseline_bleu": self.baseline_bleu, "baseline_exact_match": self.baseline_exact_match,
                "bleu_above_baseline": self.bleu - self.baseline_bleu, "comparison": self.verdict,
                "bleu_convention": BLEU_CONVENTION, "inference": self.inference, "chains": self.chains,
                "seed": self.seed}

    def rows(self) -> list[dict]:
        """Per sentence: input, reconstruction, exact match, sentence BLEU."""
        return [{"input": x, "reconstruction": y, "exact": x.split() == y.split(), "bleu": sentence_bleu(x, y)}
                for x, y in zip(self.inputs, self.outputs)]


def reconstruct(model, vocab, sentences: list[list[int]], chains: int = 1, seed: int = 0, batch_size: int = 64,
                posterior_steps: int | None = None, max_length: int | None = None,
                truncated: int = 0) -> Reconstruction:
    """Reconstruct encoded sentences (`<s> ... </s>` id lists, as `encode_lines` gives them) and
    score the copies and the prior-sample baseline. Deterministic for a seed (and batch size).

    Sentences are batched by length (less padding). Decoding runs up to `max_length` tokens (default:
    the run's max_length + 1, room for every input and its end of sentence). The codes and the
    prior samples draw from two generators seeded alike, so neither changes the other."""
    if not sentences:
        raise UserError("nothing to reconstruct: no sentences")
    chains, seed, batch_size = check_chains("chains", chains), check_seed(seed), check_count("batch_size", batch_size)
    posterior_steps = check_steps("posterior_steps", posterior_steps)
    length = model.config.max_length + 1 if max_length is None else max_length
    code_stream = torch.Generator(device=model.device).manual_seed(seed)
    prior_stream = torch.Generator(device=model.device).manual_seed(seed)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    outputs: list[str] = [""] * len(sentences)
    baseline: list[str] = []
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tokens = pad([sentences[i] for i in rows], model.pad_id).to(model.device)
            z = model.infer_code(tokens, chains, code_stream, posterior_steps)
            for i, ids in zip(rows, _greedy(model, z, length)):
                outputs[i] = vocab.decode(ids)
        for start in range(0, len(sentences), batch_size):
            z = model.prior_sample(min(batch_size, len(sentences) - start), generator=prior_stream)
            baseline += [vocab.decode(ids) for ids in _greedy(model, z, length)]
    inputs = [vocab.decode(s) for s in sentences]
    return Reconstruction(inputs, outputs, baseline, truncated, bleu(inputs, outputs), exact_share(inputs, outputs),
                          bleu(inputs, baseline), exact_share(inputs, baseline),
                          model.describe_inference(chains, posterior_steps), chains, seed)


def reconstruct_lines(model, vocab, lines: list[str], chains: int = 1, seed: int = 0, batch_size: int = 64,
                      posterior_steps: int | None = None) -> Reconstruction:
    """`reconstruct` for text lines (encoded with the run's vocabulary, cut to its max_length)."""
    encoded = encode_lines(check_lines(lines), vocab, model.config.max_length)
    return reconstruct(model, vocab, encoded.sentences, chains, seed, batch_size, posterior_steps,
                       truncated=encoded.truncated)


def _greedy(model, z: torch.Tensor, max_length: int) -> list[list[int]]:
    """Greedy decoding in fp32, whatever the run's decoding precision (a speed lever of sampling): BLEU is a
    measurement, and the server's /reconstruct answers as the command does."""
    return decode(model.decoder, z, model.bos_id, model.eos_id, max_length, greedy=True).tolist()
