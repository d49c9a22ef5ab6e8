"""imagen-lit: Imagen (Saharia et al. 2022) on Lightning + Hydra."""
