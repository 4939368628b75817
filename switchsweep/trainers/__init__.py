"""What one training worker runs: data, diffusion, EMA, checkpoints, samplers and the loop."""
