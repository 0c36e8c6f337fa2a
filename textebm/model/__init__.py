"""The model: the decoder p(x|z), the energy prior, the short-run Langevin chains, the VAE baseline,
and the run folder that holds a trained one (weights, training state, config)."""
