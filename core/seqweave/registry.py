"""The plugin registry: architectures come from pluggy plugins found through entry points.

A plugin is any module or object with a ``seqweave_register_architectures`` hook
implementation. Built-in plugins are registered exactly as third-party ones are: through
the ``seqweave`` entry-point group of their distribution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy
from torch import nn

from .config import ArchitectureConfig, format_validation_error
from .errors import ConfigError, PluginError
from .weights import WeightMap

__all__ = [
    "Architecture",
    "PluginInfo",
    "Registry",
    "Role",
    "default_registry",
    "hookimpl",
    "hookspec",
]

ENTRY_POINT_GROUP = "seqweave"
#: The distribution whose entry points are the built-in plugins; they load first and their names are reserved.
BUILTIN_DISTRIBUTION = "seqweave"
#: Restricts which third-party plugins load: entry-point names separated by commas, or ``builtin`` for none.
PLUGINS_ENV = "SEQWEAVE_PLUGINS"
Role = Literal["encoder", "decoder"]
ROLES: tuple[Role, ...] = ("encoder", "decoder")
#: What an alias may set differently from the architecture it is an alias of.
ALIAS_FIELDS = frozenset({"config", "reference", "description", "tiny_config"})
REQUIRED_CONFIG_ATTRIBUTES = ("hidden_size", "vocab_size", "initializer_range", "tie_word_embeddings")

hookspec = pluggy.HookspecMarker("seqweave")
hookimpl = pluggy.HookimplMarker("seqweave")


class _Hookspecs:
    @hookspec
    def seqweave_register_architectures(self, register: Callable[[Architecture], None]) -> None:
        """Call ``register(architecture)`` once for each architecture this plugin provides."""


@dataclass(frozen=True)
class Architecture:
    """Everything the core needs to know about one architecture.

    Attributes:
        name: the name configs use; the Hugging Face ``model_type`` (``"bert"``).
        config: the pydantic model of the architecture's own fields, with Hugging Face names.
        build: ``build(config, role)`` returns a module satisfying the Encoder or Decoder
            protocol; called on the ``meta`` device when weights are loaded afterwards.
        weight_map: ``weight_map(config, role)`` returns the two-way map between the
            module's state dict and the Hugging Face checkpoint layout for that role.
        roles: which roles the architecture can play.
        reference: for each role, the transformers class that is its reference
            implementation (``"BertLMHeadModel"``); the contract tests compare against it.
        description: one line for ``seqweave plugins``.
        tiny_config: field values for a tiny model of this architecture; the contract
            checks (``seqweave check-plugin``) build one with them, and registration
            builds its weight maps to check them.
        aliases: other model types this architecture answers to (``xlm-roberta`` and
            ``camembert`` are RoBERTa's): a sequence of names, or a mapping from each name to
            what differs for it, among ``config`` (a config model with that model type's
            defaults), ``reference``, ``description`` and ``tiny_config``. The registry
            registers each alias as an architecture of its own (see :meth:`alias`), so a
            ``config.json`` or a config file may name it, and saving writes it back.
        alias_of: for an alias, the name of the architecture it is an alias of; None otherwise.
    """

    name: str
    config: type[ArchitectureConfig]
    build: Callable[[Any, Role], nn.Module]
    weight_map: Callable[[Any, Role], WeightMap]
    roles: tuple[Role, ...] = ROLES
    reference: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    tiny_config: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, Mapping[str, Any]] | Collection[str] = field(default_factory=dict)
    alias_of: str | None = None

    def __post_init__(self) -> None:
        # One shape for the rest of the code: {alias: overrides}. A string is one alias, not letters.
        aliases = self.aliases
        if isinstance(aliases, str):
            aliases = (aliases,)
        if not isinstance(aliases, Mapping):
            aliases = {name: {} for name in aliases}
        object.__setattr__(self, "aliases", {name: dict(over or {}) for name, over in aliases.items()})

    def alias(self, name: str) -> Architecture:
        """This architecture under the other ``model_type`` ``name``, with that alias's overrides.

        The alias builds the same modules with the same weight maps; modules built from it
        are tagged with ``name``, so that a checkpoint is saved under the model type it came with.

        Raises:
            PluginError: ``name`` is not one of :attr:`aliases`, or its overrides name another field.
        """
        if name not in self.aliases:
            raise PluginError(f"architecture {self.name!r} has no alias {name!r}; it has: {', '.join(self.aliases)}")
        overrides = dict(self.aliases[name])
        unknown = sorted(set(overrides) - ALIAS_FIELDS)
        if unknown:
            raise PluginError(
                f"{self.name}.aliases[{name!r}] sets {', '.join(unknown)}; an alias may set only "
                f"{', '.join(sorted(ALIAS_FIELDS))}"
            )
        overrides.setdefault("description", f"{self.description or self.name} (as model_type {name})")
        return dataclasses.replace(self, name=name, aliases={}, alias_of=self.name, **overrides)

    def make_config(self, values: Mapping[str, Any] | None = None, *, source: str = "config") -> ArchitectureConfig:
        """Validate ``values`` into this architecture's config; :class:`ConfigError` names the field."""
        from pydantic import ValidationError

        try:
            return self.config.model_validate(dict(values or {}))
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source, model=self.config)) from None

    def build_module(self, config: ArchitectureConfig, role: Role) -> nn.Module:
        """Build the module for ``role`` and tag it with its architecture and config."""
        if role not in self.roles:
            raise ConfigError(
                f"architecture {self.name!r} cannot be used as {role}; it supports: {', '.join(self.roles)}"
            )
        module = self.build(config, role)
        module.architecture = self.name  # the registered name
        module.config = config
        module.seqweave_architecture = self  # what saving in Hugging Face layout needs
        return module


@dataclass
class PluginInfo:
    """What ``seqweave plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    architectures: list[str] = field(default_factory=list)
    error: str | None = None


class Registry:
    """Architectures by name, and the plugins that provided them.

    Args:
        load_entry_points: load every plugin of the ``seqweave`` entry-point group now.
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager("seqweave")
        self._pm.add_hookspecs(_Hookspecs)
        self._architectures: dict[str, Architecture] = {}
        self._owners: dict[str, PluginInfo] = {}
        self.plugins: list[PluginInfo] = []
        #: entry-point names that ``SEQWEAVE_PLUGINS`` left out.
        self.skipped: list[str] = []
        if load_entry_points:
            self.load_entry_points()

    def load_entry_points(
        self, group: str = ENTRY_POINT_GROUP, *, distributions: Collection[str] | None = None
    ) -> None:
        """Load the plugins of ``group``; a plugin that fails is recorded with its error, not raised.

        The built-in plugins (those of the ``seqweave`` distribution) load first, so their
        architecture names and aliases are taken before any third-party plugin runs: a third-party
        plugin that registers one of them fails, whatever the order of the path. Anything a plugin
        raises on import or in its hook, ``SystemExit`` included, is that plugin's failure;
        ``KeyboardInterrupt`` still interrupts. What a plugin prints while it loads goes to stderr.

        The environment variable ``SEQWEAVE_PLUGINS`` restricts the third-party plugins that load:
        unset or empty, all of them; ``builtin``, none; otherwise the entry-point names to load,
        separated by commas. A name there that no plugin has is recorded as a failure of its own.

        Args:
            group: the entry-point group.
            distributions: load only the plugins of these distributions (``{"seqweave"}``: the
                built-in ones, e.g. for a test that must not see third-party plugins); all if None.
                ``SEQWEAVE_PLUGINS`` applies only when this is None.
        """
        eps = list(importlib.metadata.entry_points(group=group))
        eps.sort(key=lambda ep: not _is_builtin(ep))  # stable: built-ins first, the rest in path order
        wanted = _wanted_plugins() if distributions is None else None
        seen: set[str] = set()
        for ep in eps:
            dist = ep.dist
            builtin = _is_builtin(ep)
            if distributions is not None and (dist is None or dist.name not in distributions):
                continue
            if wanted is not None and not builtin and ep.name not in wanted:
                self.skipped.append(ep.name)
                continue
            seen.add(ep.name)
            info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None)
            try:
                # What a plugin prints goes to stderr: stdout is the command's output (--json, generated text).
                with contextlib.redirect_stdout(sys.stderr):
                    self._register(ep.load(), info)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - plugin code's failures, sys.exit() included, are reported
                info.error = _reason(e)
                self.plugins.append(info)
        if distributions is None or BUILTIN_DISTRIBUTION in distributions:
            # Entry points come from the first distribution of a name on the path: a second "seqweave"
            # earlier on it would pass its plugins off as the built-in ones. Say so.
            places = [str(d.locate_file("")) for d in importlib.metadata.distributions(name=BUILTIN_DISTRIBUTION)]
            if len(places) > 1:
                self.plugins.append(PluginInfo(
                    BUILTIN_DISTRIBUTION, None, None,
                    error=f"{len(places)} {BUILTIN_DISTRIBUTION} distributions on the path, in "
                    f"{', '.join(places)}; the built-in plugins are those of the first; remove the others",
                ))
        for name in sorted((wanted or set()) - seen - {"builtin"}):
            self.plugins.append(PluginInfo(
                name, None, None,
                error=f"{PLUGINS_ENV} names {name!r}, but no installed plugin has that entry-point name",
            ))

    def register(
        self, plugin: object, name: str | None = None, *, distribution: str | None = None, version: str | None = None
    ) -> PluginInfo:
        """Register a plugin object or module (for plugins that are not installed distributions).

        Raises:
            PluginError: the plugin registers an invalid architecture or a name already taken.
        """
        info = PluginInfo(name or getattr(plugin, "__name__", type(plugin).__name__), distribution, version)
        self._register(plugin, info)
        return info

    def has_plugin(self, plugin: object) -> bool:
        """Whether ``plugin`` (the module or object itself) is registered here already."""
        return self._pm.is_registered(plugin)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        found: list[Architecture] = []
        if self._pm.is_registered(plugin):
            # pluggy would raise a bare ValueError ("already registered under a different name")
            registered_as = self._pm.get_name(plugin)
            earlier = next((p for p in self.plugins if registered_as == f"{p.name}:{id(plugin)}"), None)
            by = f"as plugin {earlier.name!r}" if earlier else "already"
            raise PluginError(
                f"plugin {info.name!r} ({plugin!r}) is registered {by} in this registry; register it once"
            )
        self._pm.register(plugin, name=f"{info.name}:{id(plugin)}")
        try:
            caller = self._pm.subset_hook_caller(
                "seqweave_register_architectures",
                remove_plugins=[p for p in self._pm.get_plugins() if p is not plugin],
            )
            caller(register=found.append)
            found = self._with_aliases(found, info)
            for arch in found:
                self._check(arch, info)
        except BaseException:
            self._pm.unregister(plugin)
            raise
        for arch in found:
            self._architectures[arch.name] = arch
            self._owners[arch.name] = info
            info.architectures.append(arch.name)
        self.plugins.append(info)

    @staticmethod
    def _where(info: PluginInfo) -> str:
        return f"plugin {info.name!r}" + (f" ({info.distribution} {info.version})" if info.distribution else "")

    def _with_aliases(self, found: list[Architecture], info: PluginInfo) -> list[Architecture]:
        """The architectures a plugin registered followed by their aliases; a name taken twice is an error."""
        where = self._where(info)
        out: list[Architecture] = []
        for arch in found:
            if not isinstance(arch, Architecture):
                raise PluginError(f"{where} registered {arch!r}, which is not a seqweave.Architecture")
            out.append(arch)
            for name in arch.aliases:
                try:
                    out.append(arch.alias(name))
                except PluginError as e:
                    raise PluginError(f"{where}: {e}") from None
        seen: dict[str, Architecture] = {}
        for arch in out:
            if arch.name in seen:
                first, second = (_what(a) for a in (seen[arch.name], arch))
                raise PluginError(f"{where} registers {arch.name!r} twice: as {first} and as {second}")
            seen[arch.name] = arch
        return out

    def _check(self, arch: Architecture, info: PluginInfo) -> None:
        where = self._where(info)
        if not isinstance(arch, Architecture):
            raise PluginError(f"{where} registered {arch!r}, which is not a seqweave.Architecture")
        if not re.fullmatch(r"[a-z][a-z0-9_\-]*", arch.name):
            raise PluginError(f"{where}: architecture name {arch.name!r} must be lowercase letters, digits, - or _")
        if arch.name in self._architectures:
            other = self._owners[arch.name]
            by = other.distribution or "not installed"
            fix = (
                "a built-in name cannot be replaced; register the architecture under another name"
                if other.distribution == BUILTIN_DISTRIBUTION
                else "uninstall one of the two"
            )
            raise PluginError(
                f"{where} registers {_what(arch)}, already registered by plugin {other.name!r} "
                f"({by}) as {_what(self._architectures[arch.name])}; {fix}"
            )
        if not (isinstance(arch.config, type) and issubclass(arch.config, ArchitectureConfig)):
            raise PluginError(f"{where}: {arch.name}.config must subclass seqweave.ArchitectureConfig")
        bad = [r for r in arch.roles if r not in ROLES]
        if bad or not arch.roles:
            raise PluginError(f"{where}: {arch.name}.roles must be a non-empty subset of {ROLES}, got {arch.roles}")
        default = arch.config()
        lacking = [a for a in REQUIRED_CONFIG_ATTRIBUTES if not hasattr(default, a)]
        if lacking:
            raise PluginError(f"{where}: {arch.name}.config lacks {', '.join(lacking)}")
        # The weight maps are checked here, for the tiny config, so that a bad ignore pattern
        # (or any other mistake in a map) names the plugin at registration, not at first load.
        try:
            tiny = arch.make_config(arch.tiny_config, source=f"{arch.name}.tiny_config")
        except ConfigError as e:
            raise PluginError(f"{where}: {e}") from None
        for role in arch.roles:
            try:
                wmap = arch.weight_map(tiny, role)
            except PluginError as e:
                raise PluginError(f"{where}: {arch.name} {role}: {e}") from None
            except Exception as e:  # a bug in the plugin's map: name the plugin, keep the cause
                raise PluginError(
                    f"{where}: {arch.name}.weight_map(tiny_config, {role!r}) failed: {type(e).__name__}: {e}"
                ) from e
            if not isinstance(wmap, WeightMap):
                got = type(wmap).__name__
                raise PluginError(f"{where}: {arch.name}.weight_map returned {got}, not a WeightMap")

    def get(self, name: str) -> Architecture:
        """The architecture called ``name``.

        Raises:
            ConfigError: no plugin registers ``name``; the message lists those that exist.
        """
        try:
            return self._architectures[name]
        except KeyError:
            known = ", ".join(sorted(self._architectures)) or "none"
            failed = [p for p in self.plugins if p.error]
            hint = f"; plugins that failed to load: {', '.join(p.name for p in failed)}" if failed else ""
            raise ConfigError(f"unknown architecture {name!r}; registered: {known}{hint}") from None

    def names(self) -> list[str]:
        """Registered architecture names, aliases included, sorted."""
        return sorted(self._architectures)

    def aliases(self) -> dict[str, str]:
        """Each registered alias and the name of the architecture it is an alias of."""
        return {n: a.alias_of for n, a in sorted(self._architectures.items()) if a.alias_of is not None}

    def __contains__(self, name: object) -> bool:
        return name in self._architectures

    def owner(self, name: str) -> PluginInfo:
        """The plugin that registered architecture ``name``."""
        return self._owners[name]


def _is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION


def _wanted_plugins() -> set[str] | None:
    """The entry-point names ``SEQWEAVE_PLUGINS`` allows (``{"builtin"}``: none), or None for all."""
    value = os.environ.get(PLUGINS_ENV, "").strip()
    if not value:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def _reason(e: BaseException) -> str:
    """Why a plugin failed, for ``seqweave plugins``: the exception type and message."""
    if isinstance(e, SystemExit):
        return f"SystemExit: the plugin called sys.exit({e.code!r}) while loading"
    return f"{type(e).__name__}: {e}"


def _what(arch: Architecture) -> str:
    """``architecture 'bert'`` or ``alias 'xlm-roberta' of architecture 'roberta'``, for messages."""
    if arch.alias_of is None:
        return f"architecture {arch.name!r}"
    return f"alias {arch.name!r} of architecture {arch.alias_of!r}"


@functools.cache
def default_registry() -> Registry:
    """The registry of installed plugins, loaded on first use."""
    return Registry()
