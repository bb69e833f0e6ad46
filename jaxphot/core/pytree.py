"""Immutable JAX pytree classes declared by their annotations, in the manner of equinox modules.

PSF and detector objects hold arrays (traced leaves: they can be differentiated and vmapped) and
configuration (static metadata: part of the compiled function's cache key)::

    @pytree
    class GaussianPRF:
        fwhm: Float[Array, ""]          # a leaf
        rotated: bool = static()        # metadata

        def __init__(self, fwhm, theta=None):
            self.fwhm = positive("fwhm", fwhm)   # numpy validation, once
            self.rotated = theta is not None

Every annotated name is a field, in the order of the annotations; ``static()`` marks metadata.
The hand-written ``__init__`` assigns each field once; afterwards the object is immutable and
changes go through ``.replace(**changes)``. Unflattening (inside ``jit``, ``vmap``...) bypasses
``__init__``, so constructors may do one-off numpy work (validation, spline prefiltering) that
must not run again on tracers.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["pytree", "static", "fields"]


class _Static:
    """The marker :func:`static` leaves on a class body until :func:`pytree` reads it."""

    def __repr__(self):
        return "static()"


_STATIC = _Static()


def static():
    """Mark an annotated field of a :func:`pytree` class as static metadata (hashable)."""
    return _STATIC


def fields(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(leaf names, static names)`` of a :func:`pytree` class or instance."""
    return cls.__pytree_fields__


def _own_fields(cls) -> tuple[list[str], list[str]]:
    """Fields declared by ``cls`` itself after those of its pytree bases, ClassVars excluded."""
    data, meta = [], []
    for base in reversed(cls.__mro__[1:]):
        d, m = getattr(base, "__pytree_fields__", ((), ()))
        data += [f for f in d if f not in data]
        meta += [f for f in m if f not in meta]
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        if str(ann).startswith(("ClassVar", "typing.ClassVar")):
            continue
        if cls.__dict__.get(name) is _STATIC:
            delattr(cls, name)  # a marker, not a default
            meta.append(name)
        else:
            data.append(name)
    return data, meta


def pytree(cls):
    """Class decorator registering ``cls`` as an immutable pytree of its annotated fields."""
    data_fields, meta_fields = _own_fields(cls)
    every = (*data_fields, *meta_fields)

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

    def setattr_once(self, name, value):
        # Each field may be assigned once (by __init__); nothing else, ever.
        if name not in every or name in self.__dict__:
            raise AttributeError(f"{cls.__name__} is immutable; use .replace(...)")
        object.__setattr__(self, name, value)

    def replace(self, **changes):
        obj = object.__new__(cls)
        for f in every:
            object.__setattr__(obj, f, changes.pop(f, getattr(self, f)))
        if changes:
            raise TypeError(f"unknown fields for {cls.__name__}: {sorted(changes)}")
        return obj

    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        missing = [f for f in every if f not in self.__dict__ and not hasattr(cls, f)]
        if missing:
            raise TypeError(f"{cls.__name__}.__init__ did not set {missing}")

    cls.__init__ = checked_init
    cls.__setattr__ = setattr_once
    cls.replace = replace
    cls.__pytree_fields__ = (tuple(data_fields), tuple(meta_fields))
    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls
