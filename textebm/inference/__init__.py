"""Estimators over z: log p(x) by importance sampling and annealing, the prior's log Z, the Laplace
proposal, bidirectional Monte Carlo, latent-usage diagnostics, and the closed-form yardstick."""
