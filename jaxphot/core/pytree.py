"""A tiny helper to make immutable classes JAX pytrees.

PSF and detector objects hold arrays (traced leaves: can be differentiated and vmapped) and
configuration (static metadata: part of the compiled function's cache key).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

__all__ = ["pytree"]


def pytree(data_fields: Sequence[str], meta_fields: Sequence[str] = ()):
    """Class decorator registering ``cls`` as a pytree.

    Unflattening bypasses ``__init__`` so that constructors may do one-off numpy work (validation,
    spline prefiltering) that must not run again on tracers inside ``jit``.
    """

    def wrap(cls):
        def flatten(obj):
            children = tuple(getattr(obj, f) for f in data_fields)
            aux = tuple(getattr(obj, f) for f in meta_fields)
            return children, aux

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for f, v in zip(data_fields, children, strict=True):
                object.__setattr__(obj, f, v)
            for f, v in zip(meta_fields, aux, strict=True):
                object.__setattr__(obj, f, v)
            return obj

        def _frozen(self, name, value):
            raise AttributeError(f"{cls.__name__} is immutable; use .replace(...)")

        def replace(self, **changes):
            obj = object.__new__(cls)
            for f in (*data_fields, *meta_fields):
                object.__setattr__(obj, f, changes.pop(f, getattr(self, f)))
            if changes:
                raise TypeError(f"unknown fields for {cls.__name__}: {sorted(changes)}")
            return obj

        cls.__setattr__ = _frozen
        cls.replace = replace
        cls._data_fields = tuple(data_fields)
        cls._meta_fields = tuple(meta_fields)
        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
        return cls

    return wrap
