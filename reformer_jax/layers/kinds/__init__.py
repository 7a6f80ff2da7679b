"""Attention kinds: one frozen, hashable object per family (see :mod:`.base` for the protocol).

The registry that maps ``attention_pattern`` names to these objects is
:data:`reformer_jax.layers.attention.KINDS`.
"""
