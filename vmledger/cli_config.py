"""Settings of ``vmledger serve`` and ``vmledger agent`` from their flags, the environment
and a TOML configuration file, in that order of precedence, then the flags' defaults.

Every flag of ``serve`` and ``agent`` is a setting named as its option (``--host-name`` is
``host_name``): ``VMLEDGER_HOST_NAME`` in the environment, ``host_name`` in the file. The
file (``--config PATH``, else ``$VMLEDGER_CONFIG``, else the first of
``$XDG_CONFIG_HOME/vmledger/vmledger.toml`` and ``/etc/vmledger/vmledger.toml`` that
exists) has settings for every command at the top level and those of one command in its
table (``[serve]``, ``[agent]``), which win. The other commands that open a database take
``db`` the same way. Secrets never need the command line: the database password
(``VMLEDGER_DB_PASSWORD``, or ``db_password_file``), tokens and users (``VMLEDGER_TOKEN``,
``token_file``…), the audit key (``VMLEDGER_AUDIT_KEY``, or ``audit_key_file``).
``vmledger config show`` prints the settings in effect, secrets masked, and where each
came from.

The merging and the validation are pydantic-settings' (its sources, in order: the flags
given, the environment, the file); each value is checked by the flag's own argparse type,
so a bad value says the same wherever it came from, naming where that was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from pydantic import BeforeValidator, ValidationError, create_model
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from vmledger.audit.chain import KEY_ENV as AUDIT_KEY_ENV
from vmledger.audit.chain import KEY_FILE_ENV as AUDIT_KEY_FILE_ENV
from vmledger.cli_support import USAGE, CliError
from vmledger.persistence import redact

ENV_PREFIX = "VMLEDGER_"
#: names the configuration file (when ``--config`` does not)
CONFIG_ENV = "VMLEDGER_CONFIG"
#: the commands every flag of which is a setting
CONFIGURED = ("serve", "agent")
#: settings that are secrets themselves (shown masked)
_SECRETS = frozenset({"db_password"})
_MASK = "***"


def default_paths() -> list[Path]:
    """Where the configuration file is looked for when none is named, in order."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return [Path(xdg) / "vmledger" / "vmledger.toml", Path("/etc/vmledger/vmledger.toml")]


# --- the settings of a command -----------------------------------------------------------
@dataclass
class Setting:
    """One setting: the flag it stands for and how its values are checked."""

    name: str
    #: the flag (None: a setting with no flag, a secret)
    flag: str | None
    default: Any
    convert: Callable[[Any], Any] | None = None
    many: bool = False
    switch: bool = False


@dataclass
class Scope:
    """The settings of one command (the parser's actions, their defaults kept here)."""

    command: str
    settings: dict[str, Setting] = field(default_factory=dict)
    #: flags that are required unless a setting gives them
    required: list[str] = field(default_factory=list)


_SCOPE_ATTR = "_vmledger_config_scope"
_SCOPES: dict[str, Scope] = {}


def _converter(action: argparse.Action) -> Callable[[Any], Any]:
    """A value of the flag from anywhere, checked as argparse checks the flag's."""
    kind = action.type
    choices = action.choices

    def convert(value: Any) -> Any:
        if isinstance(value, bool | dict | list):
            raise ValueError(f"expected a single value, not {value!r}")
        text = value if isinstance(value, str) else str(value)  # TOML numbers
        try:
            out = kind(text) if callable(kind) else text
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
        except ValueError:
            raise ValueError(f"invalid value {text!r}") from None
        if choices is not None and out not in choices:
            raise ValueError(f"{out!r} is not one of {', '.join(map(str, choices))}")
        return out
    return convert


def _words(value: Any) -> Any:
    """A list setting: a TOML array, or a string of words (a JSON array also does)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"not a JSON array of strings: {text!r}") from None
        else:
            return text.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, not {value!r}")
    return value


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {value!r}")


def _scope_of(command: str, parser: argparse.ArgumentParser, only: Sequence[str] | None
              ) -> Scope:
    scope = Scope(command)
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version", "config_file"):
            continue
        if only is not None and action.dest not in only:
            continue
        setting = Setting(action.dest, action.option_strings[-1], action.default)
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            setting.switch = True
        elif isinstance(action, argparse._AppendAction):
            setting.many = True
            setting.default = list(action.default or [])
        else:
            setting.convert = _converter(action)
        if action.required:  # a setting may give it: checked once they are resolved
            action.required = False
            scope.required.append(action.dest)
        action.default = argparse.SUPPRESS  # only the flags given are in the namespace
        scope.settings[action.dest] = setting
    if "db" in scope.settings:
        scope.settings.setdefault("db_password", Setting("db_password", None, None))
    return scope


def install(parser: argparse.ArgumentParser) -> None:
    """Make ``serve`` and ``agent`` (every flag) and the other commands that open a
    database (``--db``) configurable, and add ``vmledger config show``."""
    for sub in _subcommands(parser):
        for name, command in list(sub.choices.items()):
            _install(name, command)
    sub = next(iter(_subcommands(parser)))
    config = sub.add_parser("config", help="the configuration of serve and agent")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = csub.add_parser(
        "show", help="print the settings in effect (secrets masked) and where each came "
                     "from: vmledger config show [serve|agent] [FLAGS...]")
    show.add_argument("--config", dest="config_file", metavar="PATH",
                      help="the configuration file (as serve's --config)")
    show.add_argument("target", nargs="?", choices=CONFIGURED, default="serve",
                      help="whose settings (default serve)")
    show.add_argument("flags", nargs=argparse.REMAINDER,
                      help="flags of that command, as they would be given to it")


def _subcommands(parser: argparse.ArgumentParser) -> list[Any]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _install(name: str, parser: argparse.ArgumentParser) -> None:
    nested = _subcommands(parser)
    if nested:
        for child_name, child in nested[0].choices.items():
            _install(f"{name} {child_name}", child)
        return
    if name in CONFIGURED:
        parser.add_argument("--db-password-file", metavar="FILE",
                            help="the PostgreSQL password, read from this file (or "
                                 "VMLEDGER_DB_PASSWORD): kept out of the process list")
        parser.add_argument("--audit-key-file", metavar="FILE",
                            help="the audit chain's secret key, read from this file (or "
                                 f"{AUDIT_KEY_ENV})")
        only = None
    elif any(a.dest == "db" for a in parser._actions):
        only = ["db"]
    else:
        return
    parser.add_argument("--config", dest="config_file", metavar="PATH",
                        default=argparse.SUPPRESS,
                        help=f"a TOML configuration file (default ${CONFIG_ENV}, else "
                             "$XDG_CONFIG_HOME/vmledger/vmledger.toml or "
                             "/etc/vmledger/vmledger.toml, if there)")
    _SCOPES[name] = _scope_of(name, parser, only)
    parser.set_defaults(**{_SCOPE_ATTR: name})


# --- the configuration file ----------------------------------------------------------------
@dataclass(frozen=True)
class ConfigFile:
    path: Path | None
    data: dict[str, Any]


def config_file(named: str | None) -> ConfigFile:
    """The configuration file: ``named``, else ``$VMLEDGER_CONFIG``, else the first
    default location that exists (none: no file). A file named but missing, unreadable
    or not TOML is a one-line error (exit 2)."""
    path: Path | None = None
    if named:
        path = Path(named)
    elif os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    else:
        path = next((p for p in default_paths() if p.is_file()), None)
        if path is None:
            return ConfigFile(None, {})
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CliError(f"no configuration file at {path}", USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot read the configuration file {path}: {exc.strerror}",
                       USAGE) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not a valid TOML file: {exc}", USAGE) from None
    return ConfigFile(path, data)


def _key(name: str) -> str:
    return name.replace("-", "_")


def _file_values(scope: Scope, cfg: ConfigFile) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's values for ``scope`` and where each is (``db``, ``serve.port``). Keys
    no command knows, and tables other than the commands', are errors."""
    known = {name for s in _SCOPES.values() for name in s.settings}
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    table = scope.command if scope.command in CONFIGURED else None
    for raw, value in cfg.data.items():
        key = _key(raw)
        if isinstance(value, dict):
            if key not in CONFIGURED:
                raise CliError(f"{cfg.path}: unknown table [{raw}] (the tables are "
                               f"{', '.join(f'[{c}]' for c in CONFIGURED)})", USAGE)
            own = _SCOPES[key].settings
            for inner_raw in value:
                if _key(inner_raw) not in own:
                    raise CliError(f"{cfg.path}: [{raw}] has no setting {inner_raw!r}",
                                   USAGE)
            continue
        if key not in known:
            raise CliError(f"{cfg.path}: unknown setting {raw!r}", USAGE)
        if key in scope.settings:
            values[key], where[key] = value, key
    if table is not None:
        for raw, value in dict(cfg.data.get(table) or {}).items():
            values[_key(raw)], where[_key(raw)] = value, f"{table}.{_key(raw)}"
    return values, where


# --- resolving ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """The settings in effect for a command, and where each came from."""

    command: str
    values: dict[str, Any]
    #: ``flag --port``, ``env VMLEDGER_PORT``, ``file PATH (serve.port)`` or ``default``
    sources: dict[str, str]
    file: Path | None


def _model(scope: Scope, file_values: dict[str, Any]) -> type[BaseSettings]:
    fields: dict[str, Any] = {}
    for s in scope.settings.values():
        if s.many:
            fields[s.name] = (Annotated[list[str], NoDecode, BeforeValidator(_words)],
                              s.default)
        elif s.switch:
            fields[s.name] = (Annotated[bool, BeforeValidator(_switch)], s.default)
        elif s.convert is not None:
            fields[s.name] = (Annotated[Any, BeforeValidator(s.convert)], s.default)
        else:
            fields[s.name] = (str | None, s.default)

    class Settings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False,
                                          env_ignore_empty=True, extra="forbid",
                                          validate_default=False)

        @classmethod
        def settings_customise_sources(
                cls, settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # flag > environment > file > default
            return (init_settings, env_settings,
                    InitSettingsSource(settings_cls, init_kwargs=file_values))

    model: type[BaseSettings] = create_model(  # type: ignore[call-overload]
        f"{scope.command.title().replace(' ', '')}Settings", __base__=Settings, **fields)
    return model


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def resolve(scope: Scope, given: dict[str, Any], named_file: str | None) -> Resolved:
    """The settings of ``scope``'s command: the flags ``given``, the environment, the
    configuration file, the defaults. A bad value is a one-line error (exit 2) naming
    where it came from."""
    cfg = config_file(named_file)
    file_values, file_keys = _file_values(scope, cfg)
    environment = {k.upper() for k, v in os.environ.items() if v}
    sources: dict[str, str] = {}
    for s in scope.settings.values():
        if s.name in given:
            sources[s.name] = f"flag {s.flag}"
        elif _env_name(s.name) in environment:
            sources[s.name] = f"env {_env_name(s.name)}"
        elif s.name in file_values:
            sources[s.name] = f"file {cfg.path} ({file_keys[s.name]})"
        else:
            sources[s.name] = "default"
    try:
        settings = _model(scope, file_values)(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        where = sources.get(name, "")
        if where.startswith("flag "):
            label = where.removeprefix("flag ")
        elif where.startswith("env "):
            label = where.removeprefix("env ")
        elif where.startswith("file "):
            label = f"{cfg.path}: {file_keys.get(name, name)}"
        else:
            label = name
        message = str(error["msg"]).removeprefix("Value error, ")
        raise CliError(f"{label}: {message}", USAGE) from None
    return Resolved(scope.command, settings.model_dump(), sources, cfg.path)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line and fill in the settings the flags do not give."""
    args = parser.parse_args(argv)
    apply(parser, args)
    return args


def apply(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Resolved | None:
    """Put the settings of the command ``args`` are for into them (secrets resolved)."""
    name = getattr(args, _SCOPE_ATTR, None)
    if name is None:
        return None
    scope = _SCOPES[name]
    given = {k: v for k, v in vars(args).items() if k in scope.settings}
    resolved = resolve(scope, given, getattr(args, "config_file", None))
    for key, value in resolved.values.items():
        setattr(args, key, value)
    missing = [n for n in scope.required if resolved.values[n] is None]
    if missing:
        raise CliError(f"{name}: {scope.settings[missing[0]].flag} is required (or "
                       f"{_env_name(missing[0])}, or {missing[0]} in the configuration "
                       "file)", USAGE)
    if "db" in resolved.values:
        args.db = with_password(resolved)
    if resolved.values.get("audit_key_file"):
        _use_audit_key_file(str(resolved.values["audit_key_file"]))
    return resolved


# --- secrets ---------------------------------------------------------------------------------
def read_secret(path: str, what: str) -> str:
    """A secret kept in a file (its first line); a warning when others may read it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().rstrip("\r\n")
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc.strerror}", USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"the {what} file {path} is not UTF-8 text", USAGE) from None
    if not text:
        raise CliError(f"the {what} file {path} is empty", USAGE)
    if mode & 0o077:
        print(f"vmledger: warning: {path} holds a secret and other users may read it "
              f"(mode {mode & 0o777:o}; chmod 600 it)", file=sys.stderr)
    return text


def with_password(resolved: Resolved) -> str:
    """The database URL with the password given apart from it (``db_password`` or
    ``db_password_file``) put in."""
    url = str(resolved.values["db"])
    inline = resolved.values.get("db_password")
    path = resolved.values.get("db_password_file")
    if not inline and not path:
        return url
    if inline and path:
        raise CliError("give the database password once: VMLEDGER_DB_PASSWORD "
                       "(db_password) or a password file (db_password_file), not both",
                       USAGE)
    password = inline or read_secret(str(path), "database password")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise CliError("a database password is for a postgresql:// database, not "
                       f"{redact(url)}", USAGE)
    if parts.password:
        raise CliError("the database URL has a password already: give it in one place",
                       USAGE)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo or "postgres"
    netloc = f"{user}:{quote(str(password), safe='')}@{hostport}"
    return parts._replace(netloc=netloc).geturl()


def _use_audit_key_file(path: str) -> None:
    """The audit chain's key from a file (the audit module reads it at start-up)."""
    if os.environ.get(AUDIT_KEY_ENV):
        raise CliError(f"give the audit key once: {AUDIT_KEY_ENV} or a key file "
                       "(audit_key_file), not both", USAGE)
    read_secret(path, "audit key")
    os.environ[AUDIT_KEY_FILE_ENV] = os.path.abspath(path)


# --- config show -----------------------------------------------------------------------------
def _mask_spec(spec: str, secret_at: int) -> str:
    parts = spec.split(":")
    if len(parts) > secret_at:
        parts[secret_at] = _MASK
    return ":".join(parts)


def shown(name: str, value: Any) -> Any:
    """A setting's value as ``config show`` prints it: secrets masked."""
    if value is None:
        return None
    if name in _SECRETS:
        return _MASK
    if name == "db":
        return redact(str(value))
    if name == "token":  # TOKEN:USER:PROJECT:ROLES
        return [_mask_spec(spec, 0) for spec in value]
    if name == "user":  # NAME:PASSWORD:PROJECT:ROLES
        return [_mask_spec(spec, 1) for spec in value]
    return value


def _audit_key_line(values: dict[str, Any]) -> tuple[str, str]:
    if os.environ.get(AUDIT_KEY_ENV):
        return _MASK, f"env {AUDIT_KEY_ENV}"
    path = values.get("audit_key_file") or os.environ.get(AUDIT_KEY_FILE_ENV)
    if path:
        return _MASK, f"file {path}"
    return "(the public development key)", "default"


def show(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``vmledger config show [serve|agent] [FLAGS...]``."""
    argv = [args.target, *args.flags]
    if getattr(args, "config_file", None):
        argv += ["--config", args.config_file]
    target = parser.parse_args(argv)
    scope = _SCOPES[args.target]
    given = {k: v for k, v in vars(target).items() if k in scope.settings}
    resolved = resolve(scope, given, getattr(target, "config_file", None))
    values = dict(resolved.values)
    values["db"] = with_password(resolved)
    file = str(resolved.file) if resolved.file else "none"
    print(f"# vmledger {resolved.command}: configuration file {file}")
    rows = [(name, json.dumps(shown(name, values[name])), resolved.sources[name])
            for name in sorted(values)]
    key_value, key_source = _audit_key_line(values)
    rows.append(("audit_key", key_value, key_source))
    width = max(len(name) for name, _, _ in rows)
    value_width = min(60, max(len(value) for _, value, _ in rows))
    for name, value, source in rows:
        print(f"{name:<{width}} = {value:<{value_width}}  # {source}")
    return 0


__all__ = ["CONFIGURED", "Resolved", "apply", "config_file", "default_paths", "install",
           "parse_args", "resolve", "show", "shown", "with_password"]
