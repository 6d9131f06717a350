"""The absl flags every protocol driver shares (`scripts/compare.py`, `experiments/length_crossover.py`)
and the `ProtocolSettings` they give, so one knob has one name, default and help text everywhere.

    >>> from absl import flags
    >>> registry = flags.FlagValues()
    >>> define_protocol_flags(registry, train_tokens=8192 * 60)
    >>> registry(["driver", "--learning_rates=1e-3,3e-3", "--seeds=3"])  # doctest: +ELLIPSIS
    [...]
    >>> settings = protocol_settings(registry)
    >>> settings.learning_rates, settings.seeds, settings.grid_extensions
    ((0.001, 0.003), 3, 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import flags

from seqjax.experiment.protocol import ProtocolSettings

__all__ = ["check_settings", "default_workdir", "define_protocol_flags", "protocol_settings"]


def define_protocol_flags(registry: flags.FlagValues = flags.FLAGS, *, train_tokens: int) -> None:
    """Defines the protocol's flags on `registry`; `train_tokens` is the driver's default budget."""
    flags.DEFINE_integer(
        "train_tokens",
        train_tokens,
        "Training tokens per run (every model, length, rate and seed): the budget.",
        flag_values=registry,
    )
    flags.DEFINE_list(
        "learning_rates",
        ["1e-3", "3e-3", "1e-2"],
        "The learning-rate grid, chosen on validation with seed 0.",
        flag_values=registry,
    )
    flags.DEFINE_integer(
        "grid_extensions",
        1,
        "Rates tried past the grid's edge when the best rate lies on it (per model and length).",
        flag_values=registry,
    )
    flags.DEFINE_integer(
        "seeds",
        5,
        "Seeds per model at the chosen rate (initialisation and data order).",
        flag_values=registry,
    )
    flags.DEFINE_bool(
        "step_memory",
        True,
        "Measure XLA's memory plan of a train step (one more compile per run).",
        flag_values=registry,
    )
    flags.DEFINE_bool(
        "compilation_cache",
        True,
        "Keep compiled programs in <workdir>/.jax_cache (seeds and reruns compile once).",
        flag_values=registry,
    )
    flags.DEFINE_integer(
        "evaluation_examples",
        None,
        "Validation and test examples per evaluation, spread evenly over each split (default: every one).",
        flag_values=registry,
    )
    flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.", flag_values=registry)


def protocol_settings(registry: flags.FlagValues = flags.FLAGS, **overrides: Any) -> ProtocolSettings:
    """The `ProtocolSettings` the parsed flags ask for; `overrides` replace fields (a smoke size)."""
    values = {
        "train_tokens": registry.train_tokens,
        "learning_rates": tuple(float(x) for x in registry.learning_rates),
        "seeds": registry.seeds,
        "grid_extensions": registry.grid_extensions,
        "evaluation_examples": registry.evaluation_examples,
        "measure_step_memory": registry.step_memory,
    }
    return ProtocolSettings(**(values | overrides))


def default_workdir(root: str, driver: str, config: str, options: str, size: str) -> str:
    """`<root>/runs/<driver>/<config>-<options>[-<size>]`: one folder per task set-up, in the repository
    (`runs/` is git-ignored), so a driver's runs are found where it says and another task's runs are
    never reused.

    >>> default_workdir("/repo", "compare", "configs/genomic.py", "task=species,length=1024", "cpu")
    '/repo/runs/compare/genomic-task_species-length_1024'
    >>> default_workdir("/repo", "compare", "configs/timeseries.py", "", "accelerator")
    '/repo/runs/compare/timeseries-accelerator'
    """
    stem = os.path.splitext(os.path.basename(config))[0]
    parts = [stem] + [o.replace("=", "_") for o in options.split(",") if o]
    if size != "cpu":
        parts.append(size)
    return os.path.join(root, "runs", driver, "-".join(parts).replace("/", "_"))


def check_settings(workdir: str, settings: Mapping[str, Any]) -> None:
    """Records `settings` (JSON values) in `<workdir>/settings.json`, or checks them against the ones
    recorded there: a changed value is a ValueError naming the folder, each change and the two ways out
    (another `--workdir`, or `--fresh`). A run's config digest (`protocol.RunRecord.config_sha256`) does not
    cover what the protocol evaluates on, so without this a rerun with other settings would silently reuse
    the first one's runs. Settings the record lacks are added to it."""
    path = os.path.join(workdir, "settings.json")
    settings = json.loads(json.dumps(dict(settings)))  # tuples as lists, as read back
    saved: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [k for k in settings if k in saved and saved[k] != settings[k]]
        if changed:
            what = ", ".join(f"{k} {saved[k]!r} -> {settings[k]!r}" for k in changed)
            raise ValueError(
                f"{workdir} holds runs made with other settings ({what}); give another --workdir, or "
                "--fresh to delete those runs and train again."
            )
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({**saved, **settings}, f, indent=1)
