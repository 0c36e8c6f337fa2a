"""textebm: text generation with a latent-space energy-based prior (Pang et al., NeurIPS 2020)."""

__version__ = "0.1.0"
