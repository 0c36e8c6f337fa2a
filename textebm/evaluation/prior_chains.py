"""Sentences along prior Langevin chains (the paper's Table 3): the chains' codes decoded at chosen
steps, with the energy f(z_t) and the unnormalised log prior density at every step (`textebm chain`)."""

from __future__ import annotations

import torch

from textebm.generation.decoding import decode
from textebm.model.langevin import prior_chain


def sentences_along_chains(model, vocab, steps: list[int], chains: int, step_size: float | None, seed: int,
                           greedy: bool, max_length: int) -> dict:
    """Run `chains` prior chains for max(steps) steps; decode z at each chosen step; f and log density
    at every step. The chain of `model.prior_sample`, its noise scale (`prior_noise`) included; for the
    Gaussian prior (whose samples the model draws exactly) it is Langevin on its own density: the chain then
    wanders within N(0, sigma^2 I)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    size = model.config.prior_step_size if step_size is None else step_size
    trajectory: list = []
    prior_chain(model.prior, chains, steps[-1], size, model.device, generator, trajectory,
                noise_scale=model.config.prior_noise)
    states = torch.stack(trajectory)  # (K+1, chains, latent)
    with torch.no_grad():
        flat = states.flatten(0, 1)
        energy = model.prior.energy(flat).view(len(trajectory), chains).T.cpu()
        log_density = model.prior.log_density(flat).view(len(trajectory), chains).T.cpu()
    chosen = states[steps].flatten(0, 1)  # step-major: step 0's chains, then the next step's
    ids = decode(model.decoder, chosen, model.bos_id, model.eos_id, max_length, greedy, generator=generator)
    texts = [vocab.decode(row) for row in ids.tolist()]
    return {
        "steps": steps, "step_size": size, "noise_scale": model.config.prior_noise, "seed": seed, "greedy": greedy,
        "prior": model.config.prior,
        "chains": [{"chain": c,
                    "sentences": {str(s): texts[i * chains + c] for i, s in enumerate(steps)},
                    "energy": energy[c].tolist(), "log_density": log_density[c].tolist()}
                   for c in range(chains)],
    }
