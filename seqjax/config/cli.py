"""The scripts' `--config` on the command line: a misspelled `--config.key=value` as a one-line error
naming the closest valid keys, and `--print_config` (every key, its value, default and meaning).

    from seqjax.config.cli import config_flags_parser, print_config
    app.run(main, flags_parser=config_flags_parser())  # --config.total_stepz=5: one line, exit 2

ml_collections parses the overrides while absl parses the flags; an unknown key there escapes as a
`KeyError`/`AttributeError` traceback. `config_flags_parser` catches it, loads the config file again
and names every override that is not a key of it.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from seqjax.config.files import load_config_file

__all__ = [
    "GUESSES",
    "close_keys",
    "config_flags_parser",
    "config_keys",
    "describe_config",
    "print_config",
    "unknown_override",
]

#: Keys users guess from other frameworks (the last part of the key) -> the key they mean.
GUESSES: dict[str, str] = {
    "num_steps": "total_steps",
    "steps": "total_steps",
    "max_steps": "total_steps",
    "train_steps": "total_steps",
    "num_train_steps": "total_steps",
    "lr": "optimizer.learning_rate",
    "learning_rate": "optimizer.learning_rate",
    "seq_len": "data.length",
    "sequence_length": "data.length",
    "max_length": "data.length",
}


def _is_section(value: Any) -> bool:
    return isinstance(value, Mapping) or hasattr(value, "to_dict")


def _items(value: Any) -> list[tuple[str, Any]]:
    return sorted((str(k), v) for k, v in value.items())


def config_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of `config` (a ConfigDict or nested mapping), sections
    included as keys of their own (`--config.optimizer` is a key too).

    >>> import ml_collections
    >>> config_keys(ml_collections.ConfigDict({"a": 1, "b": {"c": 2}}))
    {'a': 1, 'b': {'c': 2}, 'b.c': 2}
    """
    out: dict[str, Any] = {}
    for key, value in _items(config):
        name = f"{prefix}{key}"
        if _is_section(value):
            out[name] = value.to_dict() if hasattr(value, "to_dict") else dict(value)
            out.update(config_keys(value, name + "."))
        else:
            out[name] = value
    return out


def close_keys(bad: str, keys: Iterable[str], n: int = 3) -> list[str]:
    """The valid keys a mistyped dotted key most likely means: a known guess of its last part
    (`GUESSES`), a key with the same last part in another section, then the closest by spelling.

    >>> close_keys("trainer.num_steps", ["total_steps", "seed", "optimizer.total_steps"])
    ['total_steps', 'optimizer.total_steps']
    >>> close_keys("total_stepz", ["total_steps", "seed"])
    ['total_steps']
    """
    keys = sorted(set(keys))
    leaf = bad.rsplit(".", 1)[-1]
    guess = GUESSES.get(leaf)
    if guess in keys:  # a known guess: that key, and its copies in other sections (the schedule's)
        same = [k for k in keys if k != guess and k.rsplit(".", 1)[-1] == guess.rsplit(".", 1)[-1]]
        return [guess, *same][:n]
    found = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    found += difflib.get_close_matches(bad, keys, n=n, cutoff=0.6)
    leaves: dict[str, list[str]] = {}
    for k in keys:
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    for close in difflib.get_close_matches(leaf, sorted(leaves), n=n, cutoff=0.7):
        found += leaves[close]
    unique = list(dict.fromkeys(found))
    return unique[:n]


_EVERY_KEY = "every key: scripts/train.py --config=<file> --print_config"


def unknown_override(config: Any, name: str, flag: str = "config") -> str | None:
    """None when `name` (a dotted `--config.<name>` override) is a key of `config`; else the one-line
    message naming it and the closest valid keys."""
    keys = config_keys(config)
    if name in keys:
        return None
    parts = name.split(".")
    for i in range(1, len(parts)):  # under a key that is a value: that key is the problem
        parent = ".".join(parts[:i])
        if parent in keys and not isinstance(keys[parent], dict):
            return f"config key {parent!r} is a value, not a section; set it as --{flag}.{parent}=..."
    close = close_keys(name, keys)
    if not close:
        return f"unknown config key {name!r}; {_EVERY_KEY}"
    return f"unknown config key {name!r}; did you mean {' or '.join(repr(k) for k in close)}? ({_EVERY_KEY})"


def _config_arg(argv: Sequence[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        match = re.match(rf"^-{{1,2}}{flag}(=(.*))?$", arg)
        if match:
            value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _overrides(argv: Sequence[str], flag: str) -> list[str]:
    names = []
    for arg in argv:
        match = re.match(rf"^-{{1,2}}(no)?{flag}\.([^=]+)", arg)
        if match:
            names.append(match.group(2))
    return names


def check_overrides(argv: Sequence[str], flag: str = "config") -> str | None:
    """The message for the first `--<flag>.key=...` of `argv` that is not a key of the config file
    `--<flag>=path[:arg]` names (None when every override is a key, or no config file is given)."""
    spec = _config_arg(argv, flag)
    names = _overrides(argv, flag)
    if not spec or not names:
        return None
    path, _, arg = spec.partition(":")
    config = load_config_file(path, arg or None)
    for name in names:
        message = unknown_override(config, name, flag)
        if message:
            return message
    return None


def config_flags_parser(flag: str = "config") -> Callable[[list[str]], list[str]]:
    """A `flags_parser` for `absl.app.run`: absl's own, except that an unknown `--<flag>.key` override
    (which ml_collections raises as a KeyError or AttributeError while parsing) is a one-line message on
    stderr and exit status 2, naming the key and the closest valid ones, and so is a config file's own
    refusal of its argument (`--config=configs/genomic.py:lstmm`: an unknown preset or option, which
    ml_collections and absl would print as a traceback inside a flags error)."""
    from absl import app
    from absl import flags as absl_flags

    def parse(argv: list[str]) -> list[str]:
        try:
            rest = absl_flags.FLAGS(argv)
            # ml_collections defers a config file it cannot read until the config is first used
            if flag in absl_flags.FLAGS and type(absl_flags.FLAGS[flag].value).__name__ == "_ErrorConfig":
                path = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), "")
                path = path.split(":", 1)[0]
                print(
                    f"{argv[0]}: --{flag}: no config file {path!r}; give a configs/*.py path.",
                    file=sys.stderr,
                )
                sys.exit(2)
            return rest
        except (KeyError, AttributeError):
            message = check_overrides(argv[1:], flag)
            if message is None:
                raise
            print(f"{argv[0]}: {message}", file=sys.stderr)
            sys.exit(2)
        except absl_flags.Error as error:
            refused = _config_file_refusal(error)
            if refused is None:
                return app.parse_flags_with_usage(argv)  # absl's own message (the same error again)
            print(f"{argv[0]}: {refused}", file=sys.stderr)
            sys.exit(2)

    return parse


def _config_file_refusal(error: BaseException) -> ValueError | None:
    """The ValueError a config file's `get_config` raised, from the flags error absl made of it
    (ml_collections re-raises it as "Error whilst parsing config file" with the traceback in the text;
    the original is that one's context), else None."""
    seen = error
    while seen.__context__ is not None:
        if str(seen).startswith("Error whilst parsing config file"):
            original = seen.__context__
            return original if isinstance(original, ValueError) else None
        seen = seen.__context__
    return None


def _data_defaults(kind: str) -> dict[str, Any]:
    """A real data kind's own defaults (`seqjax.data.<kind>.catalog.DEFAULTS`; {} when it has none)."""
    try:
        module = importlib.import_module(f"seqjax.data.{kind}.catalog")
    except ImportError:
        return {}
    return dict(getattr(module, "DEFAULTS", {}))


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_config(config: Any) -> list[str]:
    """One line per key of `config` (a ConfigDict; sections flattened to dotted keys): the key, its value,
    the trainer's default (`seqjax.train.run_config`) and its meaning (`run_config.FIELD_DOCS`)."""
    import dataclasses

    from seqjax.train.run_config import field_doc, schema

    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kind = values.get("data", {}).get("kind", "synthetic")
    defaults = config_keys(schema(values.get("task", "lm"), kind))
    defaults.update({f"data.{k}": v for k, v in _data_defaults(kind).items()})
    leaves = {k: v for k, v in config_keys(values).items() if not isinstance(v, dict)}
    width = max(len(k) for k in leaves)
    lines = []
    for key, value in leaves.items():
        default = defaults.get(key, "-")
        default = "(required)" if default is dataclasses.MISSING else _short(default, 24)
        doc = field_doc(key) or "(no description)"
        lines.append(f"{key:<{width}}  {_short(value):<28} default {default:<14} {doc}")
    return lines


def print_config(config: Any, file: Any = None) -> None:
    """Prints `describe_config(config)` with a header saying what the columns are."""
    file = sys.stdout if file is None else file
    print("key, value, default (the trainer's own; the task config may set another), meaning", file=file)
    for line in describe_config(config):
        print(line, file=file)
