"""Training data: the bundled digits, ImageFolders, prepared VAE latents (and `prepare`, the Ray Data
pipeline that writes them), batches as a pure function of (seed, step), and image grids as PNG files."""
