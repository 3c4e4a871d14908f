"""Command-line flags from dataclasses.

Each entry point describes its settings as one dataclass whose fields carry the default
and a help text (``field(default=…, metadata={"help": …, "env": …})``). That dataclass is
the single place defaults live: ``--help``, the README's flag tables, YAML recipes
(``--config``), environment variables and python-fire's ``--flag=value`` parsing all read it.

Precedence, lowest to highest: field default, YAML recipe, environment variable, flag.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from sftkit import errors
from sftkit.errors import FlagError




def flag(default: Any, help: str, env: str | None = None, **kwargs) -> Any:
    """A dataclass field carrying its help text (and optional environment variable)."""
    metadata = {"help": help}
    if env:
        metadata["env"] = env
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) for ``X | None`` style annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a value from fire, YAML or the environment to the field's type, or raise FlagError."""
    base, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional or value is None:
            return None
    origin = typing.get_origin(base) or base
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "y", "on"):
                return True
            if text in ("false", "0", "no", "n", "off"):
                return False
            raise ValueError("expected True or False")
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if base is str:
            if isinstance(value, (list, tuple)):  # fire reads a,b as a tuple
                return ",".join(str(v) for v in value)
            return str(value)
        if origin in (list, tuple):
            (item_type,) = typing.get_args(base)[:1] or (str,)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            return [coerce(name, v, item_type) for v in value]
        if origin is dict:
            if isinstance(value, str):
                import yaml

                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError("expected a mapping such as {'a': 'b'}")
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise FlagError(f"--{name}={value!r}: {exc or 'cannot convert'} (type {_type_name(tp)})") from None
    return value


def _type_name(tp: Any) -> str:
    base, optional = _base_type(tp)
    name = getattr(base, "__name__", None) or str(base).replace("typing.", "")
    if typing.get_origin(base) is not None:
        name = str(base).replace("typing.", "")
    return f"{name} | None" if optional else name


def _unknown(cls, names: list[str], where: str) -> FlagError:
    known = [f.name for f in dataclasses.fields(cls)]
    # Flags another tool (h2oGPT) has that mean nothing here: named with the reason, not guessed at.
    unsupported = getattr(cls, "__unsupported_flags__", {})
    explained = [f"--{name} has no meaning here: {unsupported[name]}" for name in names if name in unsupported]
    if explained:
        return FlagError("; ".join(explained))
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"--{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
    return FlagError(f"unknown {where}: {', '.join(parts)}. Run with --help to list every flag.")


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML recipe: a mapping of flag names to values."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FlagError(f"--config={path}: no such file")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise FlagError(f"--config={path}: expected a mapping of flag names to values, got {type(data).__name__}")
    return data


def parse(cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
          recipe_flag: str = "config"):
    """Build ``cls`` from defaults, a YAML recipe, environment variables and flags.

    ``recipe_flag`` names the field holding the recipe path (``--config``); its own
    environment variable is honoured too.
    """
    flags = {k.replace("-", "_"): v for k, v in (flags or {}).items()}
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    unknown = [k for k in flags if k not in fields]
    if unknown:
        raise _unknown(cls, unknown, "flag")

    values: dict[str, Any] = {}
    recipe_path = flags.get(recipe_flag)
    if recipe_path is None and recipe_flag in fields and fields[recipe_flag].metadata.get("env"):
        recipe_path = environ.get(fields[recipe_flag].metadata["env"]) or None
    if recipe_path:
        recipe = load_recipe(recipe_path)
        bad = [k for k in recipe if k not in fields]
        if bad:
            raise _unknown(cls, bad, f"key in {recipe_path}")
        values.update(recipe)
    for name, f in fields.items():
        env = f.metadata.get("env")
        if env and environ.get(env) not in (None, ""):
            values[name] = environ[env]
    values.update(flags)
    if recipe_path and recipe_flag in fields:
        values[recipe_flag] = str(recipe_path)
    return cls(**{k: coerce(k, v, hints[k]) for k, v in values.items()})


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def help_text(cls, prog: str, summary: str = "") -> str:
    """``--help`` output: every flag with its type, default and help."""
    hints = _hints(cls)
    lines = [f"usage: {prog} [--flag=value ...]", ""]
    if summary:
        lines += [summary.strip(), ""]
    lines.append("flags (default in brackets; also settable in a --config YAML recipe):")
    for f in dataclasses.fields(cls):
        env = f.metadata.get("env")
        extra = f" [env {env}]" if env else ""
        lines.append(f"  --{f.name}={_type_name(hints[f.name])}  [{_default_of(f)!r}]{extra}")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def markdown_table(cls) -> str:
    """The flags as a Markdown table, for the README."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        env = f.metadata.get("env")
        meaning = f.metadata.get("help", "").replace("|", "\\|")
        if env:
            meaning += f" (env `{env}`)"
        default = repr(_default_of(f)).replace("|", "\\|")
        rows.append(f"| `--{f.name}` | `{default}` | {meaning} |")
    return "\n".join(rows)


def read_argv(argv: list[str]) -> dict[str, Any]:
    """Parse ``--flag=value`` / ``--flag value`` arguments the way python-fire does."""
    import fire

    collected: dict[str, Any] = {}

    def collect(**kwargs):
        collected.update(kwargs)

    fire.Fire(collect, command=list(argv), name="")
    return collected


def main(cls, run: Callable[[Any], Any], argv: list[str] | None = None, prog: str | None = None,
         summary: str = "") -> Any:
    """Entry point helper: ``--help``, then parse flags into ``cls`` and call ``run(config)``.

    Any :class:`~sftkit.errors.SftkitError` (a bad flag included) becomes one line on stderr
    and exit status 2, with its traceback only when the config has ``debug=True``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or Path(sys.argv[0]).name
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cls, prog, summary))
        return None
    config = errors.report(prog, lambda: parse(cls, read_argv(argv)))
    return errors.report(prog, lambda: run(config), debug=bool(getattr(config, "debug", False)))
