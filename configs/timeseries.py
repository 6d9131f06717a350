"""Long-horizon multivariate forecasting: household power (minutes), appliances energy, electricity and
traffic, with the LTSF protocol (chronological splits, training-set z-scores, MSE/MAE per horizon).

    python scripts/train.py --config=configs/timeseries.py:mamba --workdir=/tmp/ts
    python scripts/train.py --config=configs/timeseries.py:s5,lookback=4096,horizon=720
    python scripts/train.py --config=configs/timeseries.py:gla,stream=1 --workdir=/tmp/ts_stream

Arg: `preset[,dataset=..,lookback=..,horizon=..,route=..,size=..,stream=1]`, and for `linformer`
`sharing=..` (e.g. `linformer,sharing=layerwise`: one E for the whole model); `route=sample` (default)
uses the real sample embedded in the repository. `stream=1` trains with segment recurrence: the training
split's rows as contiguous lanes read in segments of `lookback` rows, every layer's state carried across
batches, a forecast at every position, and no RevIN (docs/training.md, "Segment recurrence").

`length=..` is the protocol drivers' name for the sequence a model reads (`experiments/lookback.py`,
`seqjax.experiment.flags.preset_configs`): here the look-back. Giving both `length` and `lookback` with
different values is an error.

    >>> get_config("lstm,length=2048,horizon=720").data.lookback
    2048
"""

from __future__ import annotations

import ml_collections

from seqjax.config import base_config, data_section, parse_arg, preset_options

OPTIONS = {"dataset": str, "lookback": int, "length": int, "horizon": int, "route": str, "stream": int}


def _lookback(options: dict, size: str) -> int:
    """The look-back: `lookback`, else `length` (the drivers' name for it), else the size's default."""
    if "lookback" in options and "length" in options and options["lookback"] != options["length"]:
        raise ValueError(
            f"configs/timeseries.py: length={options['length']} and lookback={options['lookback']} differ; "
            "`length` is the look-back here, so give one of them (or the same value)."
        )
    return int(options.get("lookback", options.get("length", 512 if size == "cpu" else 4096)))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg, "lstm", OPTIONS, "configs/timeseries.py")
    size = options.get("size", "cpu")
    lookback = _lookback(options, size)
    c = base_config(preset, size, task="forecast", max_length=lookback, mixer=preset_options(preset, options))
    c.data = data_section(
        "timeseries",
        shuffle=True,
        dataset=options.get("dataset", "household_power"),
        lookback=lookback,
        horizon=options.get("horizon", 96),
        stride=16 if size == "cpu" else 1,  # training windows only
        route=options.get("route", "sample"),
        split_fractions=(0.7, 0.1, 0.2),
        max_examples_per_split=ml_collections.FieldReference(None, field_type=int),
    )
    # The trainer sizes the linear encoder (input_size) and, with horizon None, the head from the data.
    c.model.encoder = "linear"
    c.head.revin = True
    if options.get("stream"):  # the per-position forecaster reads the split's standardisation, not RevIN
        c.segment_recurrence = True
        c.head.revin = False
    c.checkpoint.best_metric = "mse"
    c.checkpoint.best_mode = "min"
    return c
