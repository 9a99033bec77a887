"""pyro-seqvae: sequential variational autoencoders as Pyro models."""

__version__ = "0.1.0"
