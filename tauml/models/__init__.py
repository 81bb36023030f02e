"""Models: the VQ-VAE tokenizer, the GPT backbone, the tau task heads and the baselines."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model or data it is loaded for."""


__all__ = ["CheckpointError"]
