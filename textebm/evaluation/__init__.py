"""Judging a trained run: the held-out evaluation and its resumable state, generation metrics of the
later protocol, anomaly scores, figures."""
