"""Reduced-precision decoding (issue 14): sentences/s of bf16 and int8 step products against the fp32
exact sampler and the fp32 matrix-product floor of the same run, and, with `--checkpoint RUN` (a
trained run), the quality cost: FPPL and distinct-2 of 2,000 samples per precision at the same seed.

Targets: a reduced precision at least 1.5x the fp32 exact sampler at batch 32 with FPPL and
distinct-2 within 2% of fp32's; the fp32 exact sampler at 90% or more of its floor.
"""

from __future__ import annotations

import torch

from bench import Row, build_model, interleave, median
from bench.sampling import FULL, QUICK, matrix_products
from textebm.generation.decoding import decode
from textebm.generation.precision import decoding_products

SPEED_TARGET, QUALITY_TOLERANCE, FLOOR_SHARE, TARGET_BATCH = 1.5, 0.02, 0.9, 32
QUALITY_SAMPLES = 2000


def speed_rows(quick: bool, repeats: int) -> list[Row]:
    spec = QUICK if quick else FULL
    model, cfg = build_model(spec["sizes"], spec["vocab"])
    model.eval()
    decoder, length = model.decoder, spec["length"]
    products = {p: decoding_products(decoder, p) for p in ("fp32", "bf16", "int8")}
    rows = []
    for batch in spec["batches"]:
        z = torch.randn(batch, cfg.latent_dim, generator=torch.Generator().manual_seed(batch))
        inner = 4 if batch == 1 and not quick else 1
        fns = {p: (lambda p=p, z=z, inner=inner: [decode(decoder, z, model.bos_id, -1, length, products=products[p])
                                                  for _ in range(inner)]) for p in products}
        fns["floor"] = matrix_products(decoder, batch, length, inner)
        seconds = interleave(fns, repeats, warmup=0 if quick else 1)
        rate = {name: batch * inner / median(values) for name, values in seconds.items()}
        targeted = batch == TARGET_BATCH
        share = rate["fp32"] / rate["floor"]
        rows.append(Row("precision", f"fp32 exact sampler vs its matrix-product floor, batch {batch}",
                        "sentences/s", rate["floor"], rate["fp32"], share, "share of the floor",
                        f">= {FLOOR_SHARE:.0%}" if targeted else "", (share >= FLOOR_SHARE) if targeted else None,
                        "floor: the recurrent-gate and vocabulary products alone, fp32", seconds))
        for p in ("bf16", "int8"):
            ratio = rate[p] / rate["fp32"]
            rows.append(Row("precision", f"decode {p} vs fp32, batch {batch}, {length} tokens", "sentences/s",
                            rate["fp32"], rate[p], ratio, "speed-up",
                            f">= {SPEED_TARGET:g}x (its quality: the rows below)" if targeted else "",
                            (ratio >= SPEED_TARGET) if targeted else None,
                            f"{rate[p] / rate['floor']:.2f}x the fp32 floor ({rate['floor']:.3g} sentences/s)",
                            seconds))
    return rows


def quality_rows(checkpoint: str | None, samples: int = QUALITY_SAMPLES) -> list[Row]:
    if checkpoint is None:
        return [Row("precision", "quality: FPPL and distinct-2 per precision vs fp32", target="within 2%",
                    note="not measured: needs --checkpoint RUN (a trained run)")]
    import lm_eval
    from textebm.data.corpora import open_run_corpus
    from textebm.generation.sampling import SamplingOptions, generate_text
    from textebm.model.runs import load_run

    loaded = load_run(checkpoint)
    corpus, _ = open_run_corpus(loaded.folder, loaded.config.corpus)
    real = lm_eval.real_data_lm(lm_eval.normalize_lines(corpus.lines(loaded.config.train_split)).sentences)
    model = real.load()
    rows = []
    for decoding, options in (("temperature 1", SamplingOptions()), ("greedy", SamplingOptions(greedy=True))):
        figures = {}
        for name, p, seed in (("fp32", "fp32", 0), ("fp32, seed 1", "fp32", 1), ("bf16", "bf16", 0),
                              ("int8", "int8", 0)):
            loaded.model.set_decoding_precision(p)
            text = lm_eval.normalize_lines(generate_text(loaded.model, loaded.vocab, samples,
                                                         options, seed=seed)).sentences
            figures[name] = (lm_eval.forward_ppl(text, model).ppl, lm_eval.distinct_n(text, 2))
        # Another seed at fp32: how far two sets of samples of the same model lie apart by sampling alone.
        noise = max(abs(figures["fp32, seed 1"][k] / figures["fp32"][k] - 1) for k in (0, 1))
        for p in ("bf16", "int8"):
            fppl, distinct = figures[p]
            change = max(abs(figures[p][k] / figures["fp32"][k] - 1) for k in (0, 1))
            rows.append(Row(
                "precision", f"quality {p} vs fp32, {decoding}: FPPL / distinct-2 of {samples:,} samples",
                "FPPL", figures["fp32"][0], fppl, fppl / figures["fp32"][0], "FPPL ratio",
                f"within {QUALITY_TOLERANCE:.0%}", change <= QUALITY_TOLERANCE,
                f"distinct-2 {distinct:.4f} vs {figures['fp32'][1]:.4f}; largest change {change:.1%}; fp32 with "
                f"another seed differs by {noise:.1%} (sampling noise); run {loaded.folder.name} "
                f"(step {loaded.step}), seed 0"))
    loaded.model.set_decoding_precision("fp32")
    return rows


def run(quick: bool, repeats: int, checkpoint: str | None = None) -> list[Row]:
    return speed_rows(quick, repeats) + quality_rows(checkpoint, 200 if quick else QUALITY_SAMPLES)
