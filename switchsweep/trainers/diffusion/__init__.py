"""The diffusion process: the Gaussian forward process and its losses, the samplers, and the loss
weightings over timesteps."""
