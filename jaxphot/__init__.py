"""jaxphot: differentiable, batched stellar photometry in JAX."""

__version__ = "0.1.0"
