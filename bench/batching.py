"""What the server's per-request seeds cost: `generate_for_requests` for R one-sentence requests in one
batch against one request of R sentences: the same rows, prior chain and decoding either way.

Each request of a batch draws its noise from a generator of its own (`textebm.randomness.RowStreams`),
so that its sentences are those of a lone `textebm sample --seed S`: per Langevin step of the prior
chain one normal draw per request, per decoded token one uniform draw per request. One request of R
sentences makes one draw of each where R requests make R (on a GPU, R small kernel launches). The
cost factor is the price of that: 1.0 would say the draws are free. On CUDA at the `ptb` preset's
sizes, on a CPU at the `cpu` preset's (the sizes `textebm train` picks on each); the model is untrained
and never ends a sentence (bench.build_model), so both sides decode all 40 tokens.
"""

from __future__ import annotations

import torch

from bench import Row, build_model, interleave, median
from textebm.generation.sampling import Request, SamplingOptions, generate_for_requests

FULL = dict(preset="cpu", sizes=[], vocab=10_002, requests=50, length=40)
CUDA = dict(preset="ptb", sizes=[], vocab=10_002, requests=50, length=40)
QUICK = dict(preset="cpu", sizes=["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "prior_steps=5"], vocab=300,
             requests=4, length=8)


def run(quick: bool, repeats: int, device: str = "cpu") -> list[Row]:
    device = torch.device(device)
    spec = QUICK if quick else CUDA if device.type == "cuda" else FULL
    model, cfg = build_model(spec["sizes"], spec["vocab"], preset=spec["preset"], device=device)
    model.eval()
    r, length, options = spec["requests"], spec["length"], SamplingOptions()
    each = [Request(1, seed, length) for seed in range(r)]
    together = [Request(r, 0, length)]
    seconds = interleave({"one request": lambda: generate_for_requests(model, together, options),
                          "requests": lambda: generate_for_requests(model, each, options)},
                         repeats, 0 if quick else 1, device)
    one, many = (1000 * median(seconds[k]) for k in ("one request", "requests"))
    return [Row("batching", f"{r} one-sentence requests in a batch over one request of {r}, {length} tokens, "
                            f"prior chain K0={cfg.prior_steps}, {spec['preset']} preset on {device.type}",
                "ms", one, many, many / one, "cost factor",
                note=f"per-request random streams: {r} draws per Langevin step and per token where one request "
                     f"makes one; {one:.1f} ms -> {many:.1f} ms", samples=seconds)]
