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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags

from seqjax.experiment.protocol import ProtocolSettings

__all__ = [
    "apply_size",
    "apply_size_defaults",
    "check_settings",
    "data_record",
    "data_version",
    "default_workdir",
    "define_protocol_flags",
    "define_run_flags",
    "driver_settings",
    "prepare_workdir",
    "preset_configs",
    "protocol_record",
    "protocol_settings",
    "sweep_configs",
]


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


def define_run_flags(
    registry: flags.FlagValues = flags.FLAGS,
    *,
    workdir: str,
    runs: str,
    out: str,
    fresh: str = "Delete each task's runs under --workdir first and train again.",
) -> None:
    """Defines the flags of where a length driver's runs and results go: --workdir (default `workdir`;
    `runs` says where under it the runs go), --config_overrides, --retrain, --fresh (`fresh`: its help)
    and --out (default `out`, a path without extension formatted with the driver's fields).

    >>> registry = flags.FlagValues()
    >>> define_run_flags(registry, workdir="/tmp/x", runs="<workdir>/L<length>/", out="results/x_{size}")
    >>> registry(["driver", "--noretrain"])  # doctest: +ELLIPSIS
    [...]
    >>> registry.workdir, registry.retrain, registry.fresh, registry.config_overrides
    ('/tmp/x', False, False, [])
    """
    flags.DEFINE_string("workdir", workdir, f"Runs go to {runs}.", flag_values=registry)
    flags.DEFINE_list(
        "config_overrides", [], "Extra key=value config overrides for every run.", flag_values=registry
    )
    flags.DEFINE_bool(
        "retrain", True, "Train missing runs (else only re-tabulate the finished ones).", flag_values=registry
    )
    flags.DEFINE_bool("fresh", False, fresh, flag_values=registry)
    flags.DEFINE_string("out", out, "Output path without extension.", flag_values=registry)


def protocol_settings(registry: flags.FlagValues = flags.FLAGS, **overrides: Any) -> ProtocolSettings:
    """The `ProtocolSettings` the parsed flags ask for; `overrides` replace fields (a smoke size)."""
    values = {
        "train_tokens": registry.train_tokens,
        "learning_rates": tuple(float(x) for x in registry.learning_rates),
        "seeds": registry.seeds,
        "grid_extensions": registry.grid_extensions,
        "evaluation_examples": registry.evaluation_examples,
        "measure_step_memory": registry.step_memory,
        # --noretrain (define_run_flags, or a driver's own --retrain): read finished runs, train none
        "train_missing": registry["retrain"].value if "retrain" in registry else True,
    }
    return ProtocolSettings(**(values | overrides))


def driver_settings(registry: flags.FlagValues = flags.FLAGS) -> ProtocolSettings:
    """`protocol_settings`, except `--size=smoke` (a check that a driver runs end to end, not a result):
    two batches of `--tokens_per_batch`, one learning rate (3e-3), two seeds."""
    if registry.size == "smoke":
        return protocol_settings(
            registry, train_tokens=2 * registry.tokens_per_batch, learning_rates=(3e-3,), seeds=2
        )
    return protocol_settings(registry)


def define_length_budget_flags(
    registry: flags.FlagValues, *, examples: str, lengths: str, tokens_per_batch: int
) -> None:
    """The flags `length_budget` reads: --budget (equal `examples` per run, or equal tokens),
    --windows_per_batch, --train_windows, --tokens_per_batch, --few_seeds_from, --few_seeds. `examples`
    and `lengths` name the driver's units in the help ("forecast windows", "look-backs").

        >>> define_length_budget_flags(FLAGS, examples="labelled windows", lengths="lengths",
        ...                            tokens_per_batch=16384)  # doctest: +SKIP
    """
    from seqjax.experiment.sweep import BUDGETS

    flags.DEFINE_enum(
        "budget", "windows", list(BUDGETS), f"Equal {examples} or equal tokens.", flag_values=registry
    )
    flags.DEFINE_integer(
        "windows_per_batch",
        None,
        "--budget=windows: windows per batch (default: DESIGN).",
        flag_values=registry,
    )
    flags.DEFINE_integer(
        "train_windows",
        None,
        "--budget=windows: training windows per run (default: DESIGN).",
        flag_values=registry,
    )
    flags.DEFINE_integer(
        "tokens_per_batch",
        tokens_per_batch,
        "--budget=tokens: tokens per training batch.",
        flag_values=registry,
    )
    flags.DEFINE_integer(
        "few_seeds_from",
        None,
        f"{lengths.capitalize()} >= this train --few_seeds seeds (cells > 20 min; default: DESIGN).",
        flag_values=registry,
    )
    flags.DEFINE_integer("few_seeds", 3, f"Seeds at {lengths} >= --few_seeds_from.", flag_values=registry)


def length_budget(registry: flags.FlagValues = flags.FLAGS) -> Any:
    """A length driver's `seqjax.experiment.sweep.LengthBudget` from its --budget, --windows_per_batch,
    --train_windows, --tokens_per_batch, --few_seeds_from and --few_seeds (`--size=smoke`: 2 steps,
    every seed), as `experiments/lookback.py` and `experiments/dna_windows.py` define them.

        >>> length_budget(FLAGS).settings(driver_settings(FLAGS), 16384)  # doctest: +SKIP
    """
    from seqjax.experiment.sweep import LengthBudget

    return LengthBudget(
        registry.budget,
        windows_per_batch=registry.windows_per_batch,
        train_windows=registry.train_windows,
        tokens_per_batch=registry.tokens_per_batch,
        few_seeds_from=registry.few_seeds_from,
        few_seeds=registry.few_seeds,
        steps=2 if registry.size == "smoke" else None,
    )


def preset_configs(
    config_file: str | os.PathLike[str],
    presets: Sequence[str],
    *,
    length: int,
    tokens_per_batch: int,
    size: str,
    options: str = "",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """{preset: ConfigDict} for a driver: `config_file` with `<preset>,size=<size>,length=<length>,
    <options>`, batch = tokens_per_batch // length (at least 1) for training and evaluation, then
    `overrides` (key=value). `size="smoke"` builds the "cpu" size with one layer (`driver_settings`
    shrinks the budget).

        >>> configs = preset_configs("configs/genomic.py", ["lstm"], length=1024, tokens_per_batch=8192,
        ...                          size="cpu", options="task=species")  # doctest: +SKIP
        >>> configs["lstm"].batch_size  # doctest: +SKIP
        8
    """
    from seqjax.config import apply_overrides, load_config_file

    smoke = size == "smoke"
    size = "cpu" if smoke else size
    # A smoke run checks a driver's wiring, not a result: one layer compiles in about half the time of
    # the cpu size's two (an override given wins).
    layers = ["model.num_layers=1"] if smoke else []
    batch = max(1, tokens_per_batch // length)
    extra = [o for o in options.split(",") if o]
    configs = {}
    for preset in presets:
        config = load_config_file(config_file, ",".join([preset, f"size={size}", f"length={length}", *extra]))
        configs[preset] = apply_overrides(
            config, [f"batch_size={batch}", f"eval_batch_size={batch}", *layers, *overrides]
        )
    return configs


def sweep_configs(
    config_file: str | os.PathLike[str], options: str = "", registry: flags.FlagValues = flags.FLAGS
) -> Callable[[int], dict[str, Any]]:
    """A length driver's `configs_at(length)` (`sweep.compare_lengths`): `preset_configs` of --presets
    from `config_file` at that length, with --tokens_per_batch, --size, `options` and --config_overrides.

        >>> configs_at = sweep_configs("configs/synthetic.py", "task=copy")  # doctest: +SKIP
        >>> sorted(configs_at(256))  # doctest: +SKIP
        ['lstm', 's4d']
    """

    def configs_at(length: int) -> dict[str, Any]:
        return preset_configs(
            config_file,
            registry.presets,
            length=length,
            tokens_per_batch=registry.tokens_per_batch,
            size=registry.size,
            options=options,
            overrides=registry.config_overrides,
        )

    return configs_at


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


# What a settings.json written before a setting was recorded implicitly held: every data builder was at
# version 1.0.0 until `data_version` was recorded (the genomic builder's 2.0.0 changed the chr20 splits).
SETTINGS_BEFORE_RECORDED: dict[str, Any] = {"data_version": "1.0.0"}


def data_version(config_file: str | os.PathLike[str]) -> str | None:
    """The version of the TFDS builder that `configs/<kind>.py` reads, recorded with a driver's runs
    (`protocol_record(..., **data_record(config))`) so that runs trained on other data (another split) are
    never reused; None for data made in memory (`configs/synthetic.py`).

    >>> data_version("configs/genomic.py"), data_version("configs/synthetic.py")
    ('2.0.0', None)
    """
    kind = os.path.splitext(os.path.basename(str(config_file)))[0]
    if kind == "genomic":
        from seqjax.data.genomic.builder import GenomicWindows as builder
    elif kind == "documents":
        from seqjax.data.documents.builder import Documents as builder
    elif kind == "timeseries":
        from seqjax.data.timeseries.builder import TimeSeriesBuilder as builder
    else:
        return None
    return str(builder.VERSION)


def data_record(config_file: str | os.PathLike[str]) -> dict[str, str]:
    """`{"data_version": ...}` for a driver's settings record (`protocol_record(..., **data_record(c))`),
    or nothing for data made in memory.

    >>> data_record("configs/documents.py"), data_record("configs/synthetic.py")
    ({'data_version': '1.0.0'}, {})
    """
    version = data_version(config_file)
    return {} if version is None else {"data_version": version}


def check_settings(workdir: str, settings: Mapping[str, Any]) -> None:
    """Records `settings` (JSON values) in `<workdir>/settings.json`, or checks them against the ones
    recorded there: a changed value is a ValueError naming the folder, each change and the two ways out
    (another `--workdir`, or `--fresh`). A run's config digest (`protocol.RunRecord.config_sha256`) does not
    cover what the protocol evaluates on, so without this a rerun with other settings would silently reuse
    the first one's runs. Settings the record lacks are added to it, except those of
    `SETTINGS_BEFORE_RECORDED`, which are first compared with the value a record of that time held.
    A setting whose value is a mapping holds one value per key of the sweep (few_shot's anchor per
    task): it is compared key by key, so a rerun over some of the keys (e.g. re-tabulating one task
    with --noretrain) reuses their runs when their values are unchanged, and new keys are added."""
    path = os.path.join(workdir, "settings.json")
    settings = json.loads(json.dumps(dict(settings)))  # tuples as lists, as read back
    saved: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        saved = {**{k: v for k, v in SETTINGS_BEFORE_RECORDED.items() if k in settings}, **saved}
        changed = [k for k in settings if k in saved and _setting_changed(saved[k], settings[k])]
        if changed:
            what = ", ".join(f"{k} {saved[k]!r} -> {settings[k]!r}" for k in changed)
            raise ValueError(
                f"{workdir} holds runs made with other settings ({what}); give another --workdir, or "
                "--fresh to delete those runs and train again."
            )
    merged = {**saved, **settings}
    for k, value in settings.items():
        if isinstance(value, dict) and isinstance(saved.get(k), dict):
            merged[k] = {**saved[k], **value}  # a rerun over some keys keeps the others' record
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(merged, f, indent=1)


def _setting_changed(saved: Any, given: Any) -> bool:
    """Whether a recorded setting differs from the one given: mappings key by key over their shared
    keys (`check_settings`), other values as a whole."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return any(saved[k] != given[k] for k in saved.keys() & given.keys())
    return saved != given


def apply_size_defaults(registry: flags.FlagValues, defaults: Mapping[str, Any]) -> list[str]:
    """Sets each flag of `defaults` ({name: value}) that the command line did not give, so a driver's
    `--size` can bring its own budget and sweep while an explicit flag still wins; returns the names set.

    >>> registry = flags.FlagValues()
    >>> _ = flags.DEFINE_integer("seeds", 3, "", flag_values=registry)
    >>> _ = flags.DEFINE_list("lengths", ["256"], "", flag_values=registry)
    >>> registry(["driver", "--seeds=5"])  # doctest: +ELLIPSIS
    [...]
    >>> apply_size_defaults(registry, {"seeds": 2, "lengths": ["32", "64"]}), registry.seeds
    (['lengths'], 5)
    """
    changed = []
    for name, value in defaults.items():
        if not registry[name].present:
            registry[name].value = value
            changed.append(name)
    return changed


def apply_size(registry: flags.FlagValues, by_size: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """`apply_size_defaults` with the defaults of `--size` ({size: {flag: value}}), after checking that
    the size is one of them (else absl's UsageError, listing them); returns the names set.

    >>> registry = flags.FlagValues()
    >>> _ = flags.DEFINE_string("size", "cpu", "", flag_values=registry)
    >>> _ = flags.DEFINE_integer("seeds", 3, "", flag_values=registry)
    >>> registry(["driver", "--size=smoke"])  # doctest: +ELLIPSIS
    [...]
    >>> apply_size(registry, {"cpu": {}, "smoke": {"seeds": 2}}), registry.seeds
    (['seeds'], 2)
    """
    from absl import app

    if registry.size not in by_size:
        raise app.UsageError(f"--size must be one of {sorted(by_size)}, got {registry.size!r}.")
    return apply_size_defaults(registry, by_size[registry.size])


def prepare_workdir(workdir: str | os.PathLike[str], settings: Mapping[str, Any], *, fresh: bool) -> None:
    """A driver's experiment folder: deleted first with `fresh`, then its `settings.json` recorded or
    checked (`check_settings`), so a rerun with other settings never reuses the first one's runs.

        >>> prepare_workdir("/tmp/runs/copy", {"size": "cpu", "seeds": 3}, fresh=False)  # doctest: +SKIP
    """
    import shutil

    if fresh and os.path.isdir(workdir):
        print(f"--fresh: deleting the previous runs in {workdir}", flush=True)
        shutil.rmtree(workdir)
    check_settings(str(workdir), settings)


def protocol_record(registry: flags.FlagValues, settings: ProtocolSettings, **extra: Any) -> dict[str, Any]:
    """What a driver's `settings.json` records (`prepare_workdir`): the protocol's settings, the size,
    tokens per batch and config overrides from the flags, and the driver's `extra` values (its options).

        >>> protocol_record(FLAGS, driver_settings(FLAGS), options="task=copy")  # doctest: +SKIP
        {'size': 'cpu', 'train_tokens': 307200, ..., 'options': 'task=copy'}
    """
    return {
        "size": registry.size,
        "train_tokens": settings.train_tokens,
        "learning_rates": list(settings.learning_rates),
        "seeds": settings.seeds,
        "grid_extensions": settings.grid_extensions,
        "evaluation_examples": settings.evaluation_examples,
        "tokens_per_batch": registry.tokens_per_batch,
        "config_overrides": list(registry.config_overrides),
        **extra,
    }
