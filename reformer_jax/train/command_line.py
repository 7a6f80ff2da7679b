"""``train.py``'s ``--config`` flag: any config file, every setting overridable, typos caught.

A config file lists only the model settings it changes, but ``ml_collections`` can override
only the fields a ``ConfigDict`` holds. So every loaded config is completed before the command
line's ``--config.<path>=value`` overrides apply: ``config.model`` receives every
:class:`~reformer_jax.config.ReformerConfig` field the file does not set (its dataclass
default, read at run time so new fields are covered), the training settings receive
``configs/common.py``'s defaults, and lists become tuples (``ml_collections`` overrides tuples,
not lists). An override naming no setting is answered with one line that suggests the closest
names, before anything is created.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from reformer_jax.config import ReformerConfig

# None-valued defaults need a typed placeholder to stay overridable; these annotations map to
# a plain type, anything else (e.g. ``int | tuple[int, ...] | None``) to a literal (``object``).
_PLAIN_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _placeholder_type(annotation: Any) -> type:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = [p.strip() for p in text.split("|") if p.strip() != "None"]
    if len(parts) == 1 and parts[0] in _PLAIN_TYPES:
        return _PLAIN_TYPES[parts[0]]
    return object


def _tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _lists_to_tuples(config: ml_collections.ConfigDict) -> None:
    for key in list(config.keys()):
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            _lists_to_tuples(value)
        elif isinstance(value, list):
            del config[key]  # a type-safe field cannot change type in place
            config[key] = _tuples(value)


def complete_config(
    config: ml_collections.ConfigDict, train_defaults: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """Fills in every model and training setting ``config`` leaves out (in place; returned).

    ``config.model`` gets each missing ``ReformerConfig`` field's default, except
    ``vocab_size``, which stays an empty placeholder: the trainer then takes the data's
    vocabulary (as when the file leaves it out). None defaults become typed placeholders.
    """
    with config.unlocked():
        if train_defaults is not None:
            for key, value in train_defaults.items():
                if key not in config:
                    config[key] = value
        if "model" not in config:
            config.model = ml_collections.ConfigDict()
        model = config.model
        for field in dataclasses.fields(ReformerConfig):
            if field.name in model:
                continue
            default = field.default
            if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            if field.name == "vocab_size":
                model[field.name] = config_dict.placeholder(int)
            elif default is None:
                model[field.name] = config_dict.placeholder(_placeholder_type(field.type))
            else:
                model[field.name] = _tuples(default)
        _lists_to_tuples(config)
    return config


def _override_paths(argv: Sequence[str], name: str) -> list[str]:
    """The ``<path>`` of each ``--<name>.<path>[=value]`` argument, as ml_collections reads them."""
    paths = []
    for arg in argv:
        match = re.match(rf"-{{1,2}}(?:no)?{re.escape(name)}\.([^=]+)", arg)
        if match:
            paths.append(match.group(1))
    return paths


def unknown_override(
    config: ml_collections.ConfigDict, argv: Sequence[str], name: str = "config"
) -> str | None:
    """A one-line message for the first override naming no setting of ``config``, else None."""
    for path in _override_paths(argv, name):
        holder: Any = config
        parts = path.split(".")
        for depth, part in enumerate(parts):
            if isinstance(holder, ml_collections.ConfigDict) and part in holder:
                holder = holder[part]
                continue
            prefix = ".".join(parts[:depth])
            candidates = (
                list(holder.keys()) if isinstance(holder, ml_collections.ConfigDict) else []
            )
            close = difflib.get_close_matches(part, candidates, n=3, cutoff=0.6)
            where = (
                "model settings are the fields of ReformerConfig in reformer_jax/config.py"
                if parts[0] == "model"
                else "data settings are the arguments of the data source in reformer_jax/data/"
                if parts[0] == "data"
                else "training settings are listed in configs/common.py"
            )
            if not isinstance(holder, ml_collections.ConfigDict):
                problem = f"{prefix} is a value, not a group of settings"
            else:
                problem = "no such setting"
            hint = (
                "did you mean " + " or ".join(f"--{name}.{_join(prefix, c)}" for c in close) + "? "
                if close
                else ""
            )
            return f"--{name}.{path}: {problem}; {hint}{where}"
    return None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _CompletingParser(ConfigFileFlagParser):
    """Loads a config file like ml_collections, then completes it (see :func:`complete_config`)."""

    def __init__(self, name: str, complete: Callable[[ml_collections.ConfigDict], Any]):
        super().__init__(name=name, lock_config=True)
        self._complete = complete

    def parse(self, path: str) -> Any:
        config = super().parse(path)
        if isinstance(config, ml_collections.ConfigDict):
            self._complete(config)
        return config


def load_config_file(path: str, complete: Callable[[ml_collections.ConfigDict], Any]) -> Any:
    """The completed config of ``path`` (``file.py[:arg]``); raises ValueError with one line."""
    file = pathlib.Path(path.split(":", 1)[0])
    if not file.is_file():
        raise ValueError(
            f"--config {path}: no such file; give a config file such as configs/tiny.py"
        )
    try:
        config = _CompletingParser("config", complete).parse(path)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--config {path}: {str(err).strip().splitlines()[-1]}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"--config {path}: get_config() returned {type(config).__name__}, not a ConfigDict"
        )
    return config


def config_path_in(argv: Sequence[str], default: str, name: str = "config") -> str:
    """The value of ``--<name>`` in ``argv`` (``--config x`` or ``--config=x``), else default."""
    for i, arg in enumerate(argv):
        if arg in (f"-{name}", f"--{name}") and i + 1 < len(argv):
            return argv[i + 1]
        match = re.match(rf"^-{{1,2}}{re.escape(name)}=(.*)$", arg)
        if match:
            return match.group(1)
    return default


def define_config_flag(
    complete: Callable[[ml_collections.ConfigDict], Any],
    name: str = "config",
    *,
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: Sequence[str] | None = None,
) -> flags.FlagHolder:
    """Defines ``--<name>``, a config file whose loaded configs pass through ``complete``.

    The flag is defined without a default (so nothing is parsed yet) and then given the
    completing parser; :func:`set_config_default` sets the default once the command line has
    been checked. ``sys_argv``: the command line the overrides are read from (default
    ``sys.argv``; tests pass their own).
    """
    holder = config_flags.DEFINE_config_file(
        name,
        None,
        "Training configuration file (a module with get_config()). Override any setting with "
        "--config.<path>=value: --config.model.<field> for the fields of ReformerConfig "
        "(reformer_jax/config.py), --config.<setting> for the training settings "
        "(configs/common.py); tuples quoted, e.g. --config.model.axial_shape='(32, 32)'.",
        flag_values=flag_values,
        sys_argv=None if sys_argv is None else list(sys_argv),
    )
    flag_values[name].parser = _CompletingParser(name, complete)
    return holder


def set_config_default(
    default: str, name: str = "config", *, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
    flag_values.set_default(name, default)
