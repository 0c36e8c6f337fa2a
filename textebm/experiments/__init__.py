"""Experiment grids (grids/*.toml): running them with `textebm reproduce`, locally or on Slurm, and their tables."""
