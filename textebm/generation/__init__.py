"""Text out: decoding latent codes into sentences (greedy, temperature, top-k/p; bf16 and int8
products), batched sampling, interpolation and reconstruction."""
