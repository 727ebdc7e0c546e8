"""The stable plugin API: everything a plugin may import, in one namespace.

A plugin imports from ``seqweave`` (the top-level API) and from here, nothing else: the
modules behind these names (``layers``, ``transformer``, ``weights``, ``registry``,
``config``) may be reorganised between releases, these names keep their meaning.
docs/plugins.md documents each of them; ``seqweave check-plugin NAME`` runs the contract
checks (:mod:`seqweave.testing`) against a plugin.

Building blocks (no architecture is named in them):
    :class:`Embeddings`, :class:`Attention`, :class:`FeedForward`, :class:`TransformerLayer`,
    :class:`LMHead`, :class:`TransformerEncoder`, :class:`TransformerDecoder`,
    :data:`ACTIVATIONS` and :func:`activation`.

Weight maps:
    :class:`Rule`, :func:`rule`, :class:`WeightMap`, and the rule helpers :func:`pair_rules`
    (a module's weight and bias), :func:`conv1d_rules` (transposed weight and bias, GPT-2's
    ``Conv1D``) and :func:`prefixed` (the same rules under a base-model prefix).

Registration:
    :class:`Architecture`, :class:`ArchitectureConfig`, :class:`FieldError`, :data:`Role`,
    :data:`hookimpl`.

Recipes of whole families live in the plugins that own the family's checkpoint names, not
here (the core names no architecture): ``seqweave_bert.bert_family`` builds any BERT-like
post-LayerNorm architecture (RoBERTa, ELECTRA, ...) from data.
"""

from __future__ import annotations

from .config import ArchitectureConfig, FieldError
from .errors import ConfigError, PluginError
from .layers import ACTIVATIONS, Attention, Embeddings, FeedForward, LMHead, TransformerLayer, activation
from .registry import Architecture, Role, hookimpl
from .transformer import TransformerDecoder, TransformerEncoder
from .weights import Rule, WeightMap, conv1d_rules, pair_rules, prefixed, rule

__all__ = [
    "ACTIVATIONS",
    "Architecture",
    "ArchitectureConfig",
    "Attention",
    "ConfigError",
    "Embeddings",
    "FeedForward",
    "FieldError",
    "LMHead",
    "PluginError",
    "Role",
    "Rule",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerLayer",
    "WeightMap",
    "activation",
    "conv1d_rules",
    "hookimpl",
    "pair_rules",
    "prefixed",
    "rule",
]
