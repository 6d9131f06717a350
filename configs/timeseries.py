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
"""

from __future__ import annotations

import ml_collections

from seqjax.config import base_config, data_section, parse_arg, preset_options

OPTIONS = {"dataset": str, "lookback": int, "horizon": int, "route": str, "stream": int}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg, "lstm", OPTIONS, "configs/timeseries.py")
    size = options.get("size", "cpu")
    lookback = options.get("lookback", 512 if size == "cpu" else 4096)
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
