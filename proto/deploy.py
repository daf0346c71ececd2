"""
Configuration for ``.tac`` deployments: turn an INI file and ``PROTO_*``
environment variables into the same L{proto.tap.Options} that
``twistd proto`` parses, so both ways of running share one code path.
"""

from __future__ import annotations

import configparser
from typing import Mapping

from twisted.python import usage

from proto.tap import Options

#: Options that take several values, separated by white space.
_REPEATED = {"listen", "commands"}


#: Words that turn a flag (C{PROTO_PLAIN_TRANSPORT=1}, C{plain-transport =
#: yes}) on or off.
_ON = {"1", "yes", "true", "on"}
_OFF = {"0", "no", "false", "off"}


def _flagNames() -> list[str]:
    return [name for name, *_ in Options.optFlags if name is not None]


def _optionNames() -> list[str]:
    return (
        [parameter[0] for parameter in Options.optParameters] + sorted(_REPEATED) + _flagNames()
    )


def argumentsFrom(settings: Mapping[str, str]) -> list[str]:
    """Command-line arguments for the settings C{{option name: value}}."""
    args: list[str] = []
    for name in _optionNames():
        value = settings.get(name)
        if value is None or value == "":
            continue
        if name in _flagNames():
            word = value.strip().lower()
            if word not in _ON | _OFF:
                raise usage.UsageError(
                    f"{name}: {value!r} is not one of {sorted(_ON)} or {sorted(_OFF)}"
                )
            if word in _ON:
                args.append(f"--{name}")
            continue
        # Split on white space only: endpoint descriptions escape colons
        # with backslashes (interface=\:\:1), which shell-style splitting
        # would eat.
        values = value.split() if name in _REPEATED else [value]
        for each in values:
            args.append(f"--{name}={each}")
    return args


def optionsFromEnvironment(environ: Mapping[str, str]) -> Options:
    """
    Parse the configuration file named by C{PROTO_CONFIG} (if any), then
    the C{PROTO_*} variables, which win.

    @raise usage.UsageError: naming what is wrong.
    """
    settings: dict[str, str] = {}
    configPath = environ.get("PROTO_CONFIG")
    if configPath:
        parser = configparser.ConfigParser()
        if not parser.read(configPath):
            raise usage.UsageError(f"PROTO_CONFIG: cannot read {configPath}")
        if parser.has_section("proto"):
            unknown = set(parser["proto"]) - set(_optionNames())
            if unknown:
                raise usage.UsageError(
                    f"{configPath}: unknown settings {sorted(unknown)}; "
                    f"known: {_optionNames()}"
                )
            settings.update(parser["proto"])
    for name in _optionNames():
        variable = "PROTO_" + name.upper().replace("-", "_")
        if variable in environ:
            settings[name] = environ[variable]
    options = Options()
    options.parseOptions(argumentsFrom(settings))
    return options
