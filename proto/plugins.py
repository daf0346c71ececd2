"""
Commands of your own: registries of command handlers from other packages.

A package adds commands without forking the server by exposing a
L{proto.commands.base.CommandRegistry} (handlers with our signature,
C{handler(ctx, request)}, each registered with its permission level,
PROTOCOL.md section 9), and naming it

  - in the entry-point group L{ENTRY_POINT_GROUP} (C{proto.commands}) of
    its distribution, e.g. in its C{pyproject.toml}::

        [project.entry-points."proto.commands"]
        hello = "proto_hello:registry"

    Installed, it is loaded by every C{twistd proto} of that environment;
  - or on the command line: C{twistd proto --commands proto_hello}
    (C{module} or C{module:attribute}; the attribute defaults to
    C{registry}; repeatable).

Their commands run exactly like the built-in ones: the same dispatch, the
permission check (a command registered without a level is admin-only),
C{Timeout}, cancellation, C{ERR} for L{CommandError}, the internal-error
C{ERR} with the traceback in the log for anything else, C{ctx.push} and
C{ctx.subscribe}. The example package is C{examples/proto-hello}.

A plugin that cannot be imported, that names something other than a
registry, or that defines a command that already exists (built-in or from
another plugin) stops the server at start, with a message naming the
plugin and the problem (L{PluginError}).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Iterable

from twisted.logger import Logger

from proto.commands.base import CommandRegistry

#: The entry-point group a package names its registries in.
ENTRY_POINT_GROUP = "proto.commands"

log = Logger()


class PluginError(Exception):
    """A plugin that cannot be used; the message names it and says why."""


def _registryOf(found: Any, source: str) -> CommandRegistry:
    """A loaded object: a registry, or a module holding one as C{registry}."""
    if not isinstance(found, CommandRegistry):
        found = getattr(found, "registry", found)
    if not isinstance(found, CommandRegistry):
        raise PluginError(
            f"{source} is {type(found).__name__!s}, not a proto.commands.base.CommandRegistry"
        )
    return found


def loadModule(target: str) -> CommandRegistry:
    """
    The registry named by C{--commands}: C{module} (its C{registry}) or
    C{module:attribute}.

    @raise PluginError: if it cannot be imported or is not a registry.
    """
    moduleName, _, attribute = target.partition(":")
    source = f"--commands {target}"
    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise PluginError(f"{source}: cannot import {moduleName}: {type(e).__name__}: {e}") from None
    if attribute:
        try:
            found = getattr(module, attribute)
        except AttributeError:
            raise PluginError(f"{source}: module {moduleName} has no {attribute!r}") from None
    else:
        found = getattr(module, "registry", None)
        if found is None:
            raise PluginError(f"{source}: module {moduleName} has no 'registry'")
    return _registryOf(found, source)


def entryPoints() -> list[Any]:
    """The installed entry points of L{ENTRY_POINT_GROUP}, by name."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def loadEntryPoint(entryPoint: Any) -> CommandRegistry:
    """
    @raise PluginError: if it cannot be loaded or is not a registry.
    """
    dist = getattr(entryPoint, "dist", None)
    source = (
        f"plugin {entryPoint.name!r} ({entryPoint.value}"
        + (f", from {dist.name} {dist.version}" if dist is not None else "")
        + f", entry point group {ENTRY_POINT_GROUP})"
    )
    try:
        found = entryPoint.load()
    except Exception as e:
        raise PluginError(f"{source}: cannot load: {type(e).__name__}: {e}") from None
    return _registryOf(found, source)


def withPlugins(
    base: CommandRegistry, modules: Iterable[str] = (), useEntryPoints: bool = True
) -> CommandRegistry:
    """
    C{base} plus the commands of every installed plugin and of every
    C{--commands} module.

    @raise PluginError: a plugin that cannot be loaded, or a command
        defined twice (the message names the plugin and the command).
    """
    loaded: list[tuple[str, CommandRegistry]] = []
    if useEntryPoints:
        for entryPoint in entryPoints():
            loaded.append((f"plugin {entryPoint.name!r} ({entryPoint.value})", loadEntryPoint(entryPoint)))
    for target in modules:
        loaded.append((f"--commands {target}", loadModule(target)))
    registry = base
    seen: set[int] = set()
    for source, plugin in loaded:
        if id(plugin) in seen:
            continue  # the same registry named twice (entry point and --commands)
        seen.add(id(plugin))
        clash = sorted(set(plugin.commands) & set(registry.commands))
        if clash:
            raise PluginError(
                f"{source} defines {', '.join(clash)}, which already exists: "
                "a plugin cannot replace a command; rename it"
            )
        registry = registry.merged(plugin)
        log.info(
            "Commands from {source}: {commands}",
            source=source,
            commands=", ".join(
                f"{name} ({plugin.commands[name].level})" for name in plugin.names()
            ),
        )
    return registry
