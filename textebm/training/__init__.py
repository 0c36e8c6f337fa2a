"""Learning: the training loop and its validation, where its numbers go, data parallelism, compilation."""
