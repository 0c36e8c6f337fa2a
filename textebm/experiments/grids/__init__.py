"""Experiment grids shipped with textebm (`textebm reproduce NAME`); the format is in textebm/experiments/grid.py."""
