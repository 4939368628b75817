"""Configuration: the training and sweep schemas, their composition from Hydra files and overrides, and names."""
