"""What one training worker runs, in four rooms: `diffusion` (the process, its samplers and loss
weightings), `data` (datasets, batches, latents and the Ray Data `prepare` pipeline), `evaluation`
(feature networks and sample-quality metrics) and `loop` (the training loop, its hooks and the EMA)."""
