"""Experiment (issue 18 §1 and §5): does a document language model use long context, and what does
truncated backpropagation through time cost?

A variant is `<preset>@<length>[:key=value...]`: a preset of `--config` trained on sequences of
`<length>` tokens with those config overrides, e.g. `lstm@1024`, `attention@4096`,
`lstm@16384:tbptt_length=256`, `gla@512:segment_recurrence=True`. Every variant trains on the protocol
(`seqjax.experiment.protocol`): equal training tokens, the same tokens per batch at every length (batch
= --tokens_per_batch // length, which must divide exactly), parameters matched within ±5% of one target
for all variants (the largest count among them), its own learning rate chosen on validation, --seeds
seeds. Variants of one length train in one `run_comparison` under `<workdir>/L<length>/`.

Each seed's final parameters then score every test document whole (`trainer.evaluate(by_document=True,
position_buckets=--position_buckets)`), summed by byte offset from the document's start: a plain
variant in segments of its training length, each from a fresh state (*reset*, `carried_state=False`: the
context it was trained to use); a segment-recurrent variant with the state *carried* through the
document and, as the contrast, *reset* at every segment. Only test documents with at least
--min_document_bytes scored bytes (the bytes of their targets: a document's length less its first
token) count; the report states how many qualify out of how many. With `--reuse_runs=<a
length_crossover.py --workdir>`, a length whose variants are all plain presets is not trained here: its
runs are read from that crossover (its own per-length parameter matching, among every model of that
crossover's length folder, as it was; the flags must repeat its budget, tokens per batch, rate grid,
seeds and evaluation examples, or the protocol refuses the runs as trained with another config), and
only the scoring by position is new; a seed whose final checkpoint is gone (a carried run) is trained
again under `<workdir>/retrained/` and must reproduce its record
(`protocol.retrain_missing_checkpoints`). `--max_document_tokens` scores only each document's first
that many tokens (the last bucket then ends there; the report says so).
Intervals: 95% bootstrap over those documents and the seeds
(`seqjax.experiment.positions.position_curve`, `statistics.paired_bootstrap`).

Beside bits per byte (and perplexity per byte), perplexity per BPE token (added after the first §1
run, so a paper's perplexities have a unit to compare with; not part of the rules): the same scores
regrouped by the tokens of a byte-level BPE of `--bpe_vocab_size` trained on the train split of the same
corpus (`seqjax.experiment.bpe_perplexity`: exact by the chain rule; a token counts when all its bytes
were scored, in the bucket of its first byte; each document's first token and the token across the
end of a `--max_document_tokens` span are left out), per bucket and over all, with the same intervals.
Every run's per-byte losses are cached beside its sums (`byte_losses_<mode>.npz`: per document, float32,
with the document ids and offsets), so another vocabulary needs no scoring again; a cache of another
format, or of other documents than the split's, is refused.

Verdict rules, fixed before any run:

1. *Model X uses context beyond 1k bytes* (per variant and evaluation mode): **supported** when the
   interval of the contrast bpb(4k-8k) - bpb(0-1k) (`--contrast`; over the documents that reach both
   buckets, paired by document) lies below zero, **contradicted** when it lies above, **inconclusive**
   otherwise.
2. *Recurrent beats attention past 8k* (`--claim_bucket`, the 8k-16k bucket): the best recurrent and
   the best attention variant, each chosen on its validation bits per byte (a segment-recurrent variant
   in its carried mode, a plain one reset); the paired bootstrap interval (documents and seeds) of
   bpb(recurrent) - bpb(attention) on that bucket, over the qualifying documents that reach it. The
   claim is **supported** when the interval lies below zero, **contradicted** above, else
   **inconclusive** (`seqjax.experiment.verdict`, direction "less").
3. *The cost of truncation* (§5): for every variant with `tbptt_length` or `segment_recurrence` whose
   preset also has a plain (full-BPTT) variant, bpb(truncated) - bpb(full) per bucket with its paired
   interval, against the plain variant of the longest length; a bucket's interval above zero means
   truncation costs bits there, below zero that it helps, else no measurable cost. Reported per bucket,
   not pooled into one word. (Beside it, added after the first §5 run and not part of the rule: the same
   difference with the seeds paired too, `statistics.paired_bootstrap(paired_seeds=True)`: seed i of
   two variants of one preset starts from the same initialisation.)

    python experiments/context_use.py --size=smoke --variants=lstm@64,gla@32:segment_recurrence=True \
        --options=corpus=python_docs --tokens_per_batch=512 --position_buckets=0,64,128,256 \
        --contrast=128,0 --claim_bucket=128 --min_document_bytes=256        # ~1 minute: the wiring
    python experiments/context_use.py                        # §1 at CPU size
    python experiments/context_use.py --study=truncation     # §5 at CPU size

Results: `experiments/results/context_use_{study}_{size}_{platform}.md`, `.json` and `_bpb.png`,
`_perplexity.png`. An interrupted run resumes from the finished runs and cached evaluations in
--workdir; `settings.json` there refuses a rerun with other training settings (`--fresh` starts over);
the scoring flags (buckets, bounds, BPE vocabulary) are not training settings and are not recorded there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from seqjax.experiment.flags import (
    data_record,
    define_protocol_flags,
    driver_settings,
    prepare_workdir,
    preset_configs,
    protocol_record,
)
from seqjax.experiment.outputs import provenance_lines

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=16384 * 60)
flags.DEFINE_string("config", "configs/documents.py", "Task config file (a document LM).")
flags.DEFINE_string("options", "corpus=python_docs,route=offline", "Config-arg options for every variant.")
flags.DEFINE_enum(
    "study", "context", ["context", "truncation"], "Default variants: §1 (context) or §5 (truncation)."
)
flags.DEFINE_list("variants", [], "Variants <preset>@<length>[:key=value...] (default: --study's set).")
flags.DEFINE_integer("truncation_length", 16384, "The sequence length of --study=truncation's variants.")
flags.DEFINE_integer("tokens_per_batch", 16384, "Tokens per training batch at every length.")
flags.DEFINE_list(
    "position_buckets", ["0", "1024", "2048", "4096", "8192", "16384"], "Bucket edges (byte offsets)."
)
flags.DEFINE_list("contrast", ["4096", "0"], "Rule 1: the late and early bucket starts.")
flags.DEFINE_integer("claim_bucket", 8192, "Rule 2: the start of the bucket recurrent vs attention is on.")
flags.DEFINE_integer("min_document_bytes", 16384, "Test documents with fewer scored bytes do not count.")
flags.DEFINE_integer(
    "max_document_tokens", None, "Score only each test document's first this many tokens (default: all)."
)
flags.DEFINE_string("size", "cpu", "Model size (seqjax.config.SIZES), or 'smoke': 2 steps, 2 seeds, 1 rate.")
flags.DEFINE_string("workdir", "/tmp/seqjax_context", "Runs go to <workdir>/L<length>/<variant>/.")
flags.DEFINE_bool("fresh", False, "Delete --workdir's runs first and train again.")
flags.DEFINE_string(
    "reuse_runs",
    None,
    "A length_crossover.py --workdir whose runs the plain variants of a length reuse (module docstring).",
)
flags.DEFINE_list("config_overrides", [], "Extra key=value config overrides for every run.")
flags.DEFINE_integer(
    "bpe_vocab_size",
    8192,
    "Perplexity per BPE token beside bits per byte: the vocabulary of a byte-level BPE trained on the "
    "train split of the same corpus (seqjax.experiment.bpe_perplexity); 0: not reported, no per-byte "
    "loss cache.",
)
flags.DEFINE_string(
    "out", "experiments/results/context_use_{study}_{size}_{platform}", "Output path without extension."
)
flags.DEFINE_bool(
    "replot", False, "Redraw the plots from the JSON already at --out (nothing trained or scored), then exit."
)

CLAIM_CONTEXT = "uses context beyond the early bucket"
CLAIM_RECURRENT = "recurrent beats attention"
WORD = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}
#: Rule 3's words for bpb(truncated) - bpb(full)'s interval: above zero, below zero, containing it.
TRUNCATION_WORD = {"supported": "costs", "contradicted": "helps", "inconclusive": "no measurable cost"}


@dataclass(frozen=True)
class Variant:
    """One parsed `<preset>@<length>[:key=value...]`."""

    name: str
    preset: str
    length: int
    overrides: tuple[str, ...]

    @property
    def segment_recurrent(self) -> bool:
        return any(o.replace(" ", "").lower() == "segment_recurrence=true" for o in self.overrides)

    @property
    def truncated(self) -> bool:
        return self.segment_recurrent or any(o.startswith("tbptt_length=") for o in self.overrides)

    @property
    def modes(self) -> tuple[str, ...]:
        """The evaluation modes: carried (and reset, the contrast) with segment recurrence, else reset."""
        return ("carried", "reset") if self.segment_recurrent else ("reset",)

    @property
    def main_mode(self) -> str:
        return self.modes[0]


def parse_variant(text: str) -> Variant:
    """`<preset>@<length>[:key=value...]` as a `Variant`.

    >>> parse_variant("lstm@16384:tbptt_length=256")
    Variant(name='lstm@16384:tbptt_length=256', preset='lstm', length=16384, overrides=('tbptt_length=256',))
    >>> parse_variant("gla@512:segment_recurrence=True").modes
    ('carried', 'reset')
    """
    head, *overrides = text.strip().split(":")
    preset, _, length = head.partition("@")
    if not preset or not length.isdigit() or int(length) < 1 or any("=" not in o for o in overrides):
        raise ValueError(
            f"context_use: variant {text!r} is not <preset>@<length>[:key=value...], e.g. lstm@1024 or "
            "lstm@16384:tbptt_length=256."
        )
    return Variant(text.strip(), preset, int(length), tuple(overrides))


def default_variants(study: str, size: str, truncation_length: int) -> list[str]:
    """§1's set (lstm, elstm, mamba, gla, s5, attention, swa at 1k and 4k, 16k too at accelerator size,
    and the segment-recurrent lstm, gla and xl_attention at 512) or §5's (lstm at `truncation_length`
    with full BPTT and tbptt_length 256, 1024, 4096, and the segment-recurrent lstm at 512)."""
    if study == "truncation":
        full = f"lstm@{truncation_length}"
        chunks = [k for k in (256, 1024, 4096) if k < truncation_length]
        return [full, *(f"{full}:tbptt_length={k}" for k in chunks), "lstm@512:segment_recurrence=True"]
    lengths = (1024, 4096, 16384) if size == "accelerator" else (1024, 4096)
    presets = ("lstm", "elstm", "mamba", "gla", "s5", "attention", "swa")  # issue 18's models for the LM
    plain = [f"{p}@{n}" for n in lengths for p in presets]
    return plain + [f"{p}@512:segment_recurrence=True" for p in ("lstm", "gla", "xl_attention")]


def _configs(variants: Sequence[Variant]) -> dict[str, Any]:
    """{variant name: config}, its preset at its length with its overrides, batch = tokens_per_batch //
    length (which must divide, so every variant trains on the same tokens per batch)."""
    configs = {}
    for v in variants:
        if FLAGS.tokens_per_batch % v.length:
            raise ValueError(
                f"context_use: --tokens_per_batch={FLAGS.tokens_per_batch} is not a multiple of {v.name}'s "
                "length; every variant must train on the same tokens per batch."
            )
        configs[v.name] = preset_configs(
            ROOT / FLAGS.config,
            [v.preset],
            length=v.length,
            tokens_per_batch=FLAGS.tokens_per_batch,
            size=FLAGS.size,
            options=FLAGS.options,
            overrides=[*v.overrides, *FLAGS.config_overrides],
        )[v.preset]
    return configs


def _other_swept_configs(folder: Path, wanted: Sequence[str], length: int) -> dict[str, Any]:
    """The configs of the models in a reused crossover's length folder besides `wanted`: the crossover
    matched parameters among all of its models (the largest is the target), so its runs' digests are
    reproduced only by matching among the same set."""
    others = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and p.name != "predictions" and p.name not in wanted
    )
    if not others:
        return {}
    return preset_configs(
        ROOT / FLAGS.config,
        others,
        length=length,
        tokens_per_batch=FLAGS.tokens_per_batch,
        size=FLAGS.size,
        options=FLAGS.options,
        overrides=list(FLAGS.config_overrides),
    )


def _read_reused(configs: dict[str, Any], settings: Any, folder: Path, length: int) -> dict[str, Any]:
    """`run_comparison` over a reused crossover's finished runs, never training into its folder."""
    import dataclasses

    from seqjax.experiment.protocol import MissingRunError, run_comparison

    try:
        return run_comparison(
            configs, dataclasses.replace(settings, train_missing=False), folder, length=length
        )
    except MissingRunError as e:
        raise MissingRunError(
            f"context_use --reuse_runs: {folder} does not hold every run of its models yet ({e}). Let that "
            "crossover finish first, or train the variants here (leave --reuse_runs out)."
        ) from e


def document_sums(
    workdir: str,
    mode: str,
    edges: Sequence[int],
    max_tokens: int | None = None,
    byte_losses: bool = False,
) -> tuple[dict[str, np.ndarray], Any]:
    """The per-document sums ("nll", "tokens", "bucket_nll", "bucket_tokens", "bucket_bytes") of the
    run in `workdir` (its last checkpoint) on the test documents (the first `max_tokens` of each, or
    all), state carried or reset (`mode`), cached in `<workdir>/positions_<mode>.npz` (with the edges and
    the bound: others evaluate again); with `byte_losses`, also every scored byte's loss
    (`seqjax.experiment.bpe_perplexity.ByteLosses`, else None), cached in
    `<workdir>/byte_losses_<mode>.npz`, so perplexity per BPE token (any vocabulary) needs no scoring
    again. Both come from one evaluation; a byte-loss cache of another format, or one that disagrees
    with the sums (another scoring's), is refused."""
    from seqjax.experiment.bpe_perplexity import ByteLosses, load_byte_losses, save_byte_losses
    from seqjax.train.trainer import evaluate, load_config

    cache = Path(workdir) / f"positions_{mode}.npz"
    loss_cache = Path(workdir) / f"byte_losses_{mode}.npz"
    bound = np.asarray(-1 if max_tokens is None else max_tokens)
    sums = losses = None
    if cache.exists():
        with np.load(cache) as saved:
            same_bound = (
                np.array_equal(saved["max_tokens"], bound)
                if "max_tokens" in saved.files
                else max_tokens is None
            )
            if np.array_equal(saved["edges"], np.asarray(edges)) and same_bound:
                sums = {k: saved[k] for k in saved.files if k not in ("edges", "max_tokens")}
    if byte_losses and loss_cache.exists():
        losses = load_byte_losses(loss_cache)  # another format: refused
        if losses.max_tokens != max_tokens:
            losses = None  # scored over another span: score again
    if sums is not None and (losses is not None or not byte_losses):
        if losses is not None:
            _check_same_scoring(sums, losses, loss_cache)
        return sums, losses
    result = evaluate(
        load_config(workdir),
        workdir,
        split="test",
        step="latest",
        carried_state=mode == "carried",
        by_document=True,
        position_buckets=tuple(edges),
        max_document_tokens=max_tokens,
        per_target=byte_losses,
    )
    sums = {k: np.asarray(v, np.float64) for k, v in result["per_document"].items()}
    if byte_losses:
        ids = result.get("document_ids") or [str(d) for d in range(len(sums["nll"]))]
        losses = ByteLosses.from_targets(result["per_target"], ids, max_tokens)
        _check_same_scoring(sums, losses, loss_cache)
        save_byte_losses(loss_cache, losses)
    partial = cache.with_suffix(".tmp.npz")
    np.savez(partial, edges=np.asarray(edges), max_tokens=bound, **sums)
    os.replace(partial, cache)  # a killed evaluation leaves no half-written cache
    return sums, losses


def _check_same_scoring(sums: dict[str, np.ndarray], losses: Any, path: Path) -> None:
    """Refuses per-byte losses that are not the per-document sums' targets (another scoring's)."""
    same = len(losses.document_ids) == len(sums["nll"]) and np.array_equal(
        losses.targets_per_document(), sums["tokens"]
    )
    if not same or not np.allclose(losses.document_nats(), sums["nll"], rtol=1e-4, atol=1e-3):
        raise ValueError(
            f"context_use: {path} does not hold the per-byte losses of the sums beside it "
            f"({path.with_name(path.name.replace('byte_losses', 'positions'))}): other documents or another "
            "scoring. Delete both to score the run again."
        )


def _interval(value: Any) -> dict[str, float]:
    return {"estimate": float(value.estimate), "low": float(value.low), "high": float(value.high)}


def _classify(direction: str, interval: dict[str, float]) -> str:
    """The rule's word for a difference over documents (each its own cluster): "inconclusive" without an
    interval, "not judged (...)" over fewer than `verdict.MIN_CLUSTERS` documents."""
    from seqjax.experiment.verdict import classify_interval, not_judged, too_few_clusters

    if not (math.isfinite(interval["low"]) and math.isfinite(interval["high"])):
        return "inconclusive"  # fewer than 2 documents: no interval
    documents = interval.get("documents")
    if too_few_clusters(documents):
        return not_judged(int(documents), "documents")  # type: ignore[arg-type]
    return WORD[classify_interval(direction, interval["low"], interval["high"])]  # type: ignore[arg-type]


def _truncation_word(direction: str, interval: dict[str, float]) -> str:
    """Rule 3's word (costs, helps, no measurable cost; or not judged) for a truncated-minus-full
    difference."""
    word = _classify(direction, interval)
    return TRUNCATION_WORD.get(word, word)


def _bucket_difference(
    a: list[dict[str, np.ndarray]],
    b: list[dict[str, np.ndarray]],
    k: int,
    level: float,
    resamples: int,
    paired_seeds: bool = False,
) -> dict[str, Any]:
    """bpb(a) - bpb(b) on bucket k, paired by document over those that reach it (and by seed with
    `paired_seeds`: two variants of one preset, seed i of each from the same initialisation), with its
    interval."""
    from seqjax.experiment import statistics, weighted_metrics

    size = a[0]["bucket_bytes"][:, k]
    if not np.array_equal(size, b[0]["bucket_bytes"][:, k]):
        raise ValueError("context_use: two variants scored other bytes in one bucket; same documents needed.")
    reached = size > 0
    out: dict[str, Any] = {"documents": int(reached.sum())}
    if reached.sum() < 2:
        return out | {"estimate": math.nan, "low": math.nan, "high": math.nan}
    nll_a = np.stack([s["bucket_nll"][reached, k] for s in a])
    nll_b = np.stack([s["bucket_nll"][reached, k] for s in b])
    difference = statistics.paired_bootstrap(
        nll_a,
        nll_b,
        targets=size[reached],
        metric=weighted_metrics.bits_per_byte,
        confidence_level=level,
        n_resamples=resamples,
        paired_seeds=paired_seeds,
    )
    return out | _interval(difference)


#: The n-gram orders scored by position beside the models.
BASELINE_ORDERS = (3, 5)
#: Bytes a baseline's scored span may differ from the models' per document (a BPE first token, the
#: end-of-document target); more means the documents are not the same ones, in the same order.
SPAN_SLACK_BYTES = 16


def ngram_baseline_sums(
    config: Any, scored_bytes: np.ndarray, edges: Sequence[int], orders: Sequence[int] = BASELINE_ORDERS
) -> dict[str, dict[str, np.ndarray]]:
    """{name: per-document sums by position} of Kneser–Ney byte n-gram models fit on the train split
    of `config`'s documents and scored on its test documents over the models' spans (`scored_bytes` per
    document, `seqjax.baselines.documents.ngram_position_sums`): the control for the position effect
    that needs no long context."""
    from seqjax.baselines.documents import ngram_position_sums, read_split_documents
    from seqjax.baselines.kneser_ney import KneserNeyBytes
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import default_data_dir

    run = resolve(config)
    documents = read_split_documents(run.data.source_options(), run.data_dir or default_data_dir())
    test = documents["test"]
    if len(test) != len(scored_bytes):
        raise ValueError(
            f"context_use: the test split has {len(test)} documents but the models scored "
            f"{len(scored_bytes)}; the baselines need the models' documents."
        )
    out = {}
    for order in orders:
        sums = ngram_position_sums(KneserNeyBytes(documents["train"], order), test, edges, scored_bytes)
        off = np.abs(sums["bucket_bytes"].sum(1) - scored_bytes)
        if off.max() > SPAN_SLACK_BYTES:
            raise ValueError(
                f"context_use: the {order}-gram baseline scored {off.max():.0f} bytes more or fewer than "
                f"the models in document {int(off.argmax())}; the documents are not in the models' order."
            )
        out[f"{order}-gram Kneser–Ney"] = sums
    return out


#: The BPE sums `summarize` reports over the qualifying documents (one seed's: every seed has the same).
BPE_COUNTS = ("bucket_tokens", "bucket_bytes", "partial_tokens", "excluded_bytes")


def trained_config(trained: dict[str, Any]) -> Any:
    """The config of one of `trained`'s runs (they share the task's data)."""
    from seqjax.train.trainer import load_config

    return load_config(next(iter(trained.values())).seeds[0].workdir)


def bpe_sums(
    losses: dict[tuple[str, str], list[Any]], edges: Sequence[int], vocab_size: int, config: Any
) -> dict[str, Any]:
    """{"sums": {(variant, mode): per seed, the BPE-token sums by position
    (`bpe_perplexity.bpe_position_sums`)}, "about": the tokenizer's description}: a byte-level BPE of
    `vocab_size` trained on the train split of `config`'s documents (`bpe_perplexity.split_bpe`), the
    test documents tokenized with it, every run's cached per-byte losses regrouped by its tokens
    (refused when they were scored on other documents)."""
    from seqjax.experiment.bpe_perplexity import bpe_position_sums, split_bpe, token_boundaries
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import default_data_dir

    run = resolve(config)
    split = split_bpe(run.data.source_options(), run.data_dir or default_data_dir(), vocab_size)
    boundaries = token_boundaries(split["tokenizer"], split["test_documents"])
    sums = {}
    for key, runs in losses.items():
        for x in runs:
            x.check_documents(split["test_ids"], f"context_use ({key[0]}, {key[1]})")
        sums[key] = [bpe_position_sums(x, boundaries, edges) for x in runs]
    about = {
        "tokenizer": "byte-level BPE (seqjax.data.bpe.train_bpe, `tokenizers`)",
        "vocab_size": vocab_size,
        "trained_vocab_size": split["tokenizer"].trained_vocab_size,
        "corpus": split["corpus"],
        "train_documents": split["train_documents"],
        "train_bytes": split["train_bytes"],
    }
    return {"sums": sums, "about": about}


def summarize(
    trained: dict[str, Any],
    variants: Sequence[Variant],
    edges: Sequence[int],
    level: float,
    resamples: int,
    baseline_config: Any | None = None,
) -> dict[str, Any]:
    """Per variant: its protocol record, and per mode the position curve over the qualifying documents
    with rule 1's verdict; rule 2's comparison; rule 3's truncation costs; with `baseline_config`, the
    n-gram baselines' position curves on the same documents and spans (`ngram_baseline_sums`).
    `trained`: {variant name: `ModelResult`}."""
    from seqjax.experiment.bpe_perplexity import perplexity_curve
    from seqjax.experiment.positions import bucket_label, position_curve
    from seqjax.experiment.protocol import validation_rank
    from seqjax.experiment.report import family_of

    contrast = (int(FLAGS.contrast[0]), int(FLAGS.contrast[1]))
    sums: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
    losses: dict[tuple[str, str], list[Any]] = {}
    for v in variants:
        for mode in v.modes:
            scored = [
                document_sums(r.workdir, mode, edges, FLAGS.max_document_tokens, bool(FLAGS.bpe_vocab_size))
                for r in trained[v.name].seeds
            ]
            sums[v.name, mode] = [s for s, _ in scored]
            losses[v.name, mode] = [x for _, x in scored]
    first = next(iter(sums.values()))[0]
    scored_bytes = first["bucket_bytes"].sum(1)
    keep = scored_bytes >= FLAGS.min_document_bytes
    for runs in sums.values():
        for s in runs:
            if not np.array_equal(s["bucket_bytes"].sum(1), scored_bytes):
                raise ValueError("context_use: the variants scored different documents; same split needed.")
    kept = {key: [{k: v[keep] for k, v in s.items()} for s in runs] for key, runs in sums.items()}
    documents = {
        "total": len(keep),
        "qualifying": int(keep.sum()),
        "min_document_bytes": FLAGS.min_document_bytes,
        "max_document_tokens": FLAGS.max_document_tokens,
        "qualifying_bytes": float(scored_bytes[keep].sum()),
    }
    baselines: dict[str, Any] = {}
    if baseline_config is not None and keep.any():
        for name, b in ngram_baseline_sums(baseline_config, scored_bytes, edges).items():
            curve = position_curve(
                [{k: x[keep] for k, x in b.items()}],
                edges,
                contrast=contrast,
                confidence_level=level,
                n_resamples=resamples,
            )
            baselines[name] = curve | {"verdict": _classify("less", curve["contrast"])}
    bpe = None
    if FLAGS.bpe_vocab_size and keep.any():
        bpe = bpe_sums(losses, edges, FLAGS.bpe_vocab_size, baseline_config or trained_config(trained))
    rows: dict[str, Any] = {}
    for v in variants:
        result = trained[v.name]
        record = result.seeds[0]
        chosen = next(r for r in result.grid if r.learning_rate == result.learning_rate)
        row: dict[str, Any] = {
            "preset": v.preset,
            "length": v.length,
            "overrides": list(v.overrides),
            "family": family_of(v.preset),
            "modes": {},
            "seeds": len(result.seeds),
            "learning_rate": result.learning_rate,
            "validation_bits_per_byte": chosen.validation.get("bits_per_byte"),
            "grid": {f"{r.learning_rate:g}": r.validation.get("bits_per_byte") for r in result.grid},
            "parameters": result.matched["parameters"],
            "step_memory_bytes": record.step_memory_bytes,
            "peak_memory_bytes": record.peak_memory_bytes,
            "tokens_per_s": float(np.median([r.tokens_per_s for r in result.seeds])),
            "train_tokens": record.train_tokens,
            "batch_size": FLAGS.tokens_per_batch // v.length,
        }
        for mode in v.modes:
            if not keep.any():
                continue
            curve = position_curve(
                kept[v.name, mode], edges, contrast=contrast, confidence_level=level, n_resamples=resamples
            )
            curve["verdict"] = _classify("less", curve["contrast"])
            if bpe is not None:
                curve["bpe"] = perplexity_curve(
                    [{k: x[keep] for k, x in b.items()} for b in bpe["sums"][v.name, mode]],
                    edges,
                    confidence_level=level,
                    n_resamples=resamples,
                )
            row["modes"][mode] = curve
        rows[v.name] = row

    # Rule 2: best recurrent vs best attention (validation bpb), on the claim bucket.
    k = list(edges).index(FLAGS.claim_bucket) if FLAGS.claim_bucket in edges else None
    rule2: dict[str, Any] = {"claim": CLAIM_RECURRENT, "bucket": None, "verdict": "inconclusive"}
    best = {}
    for family in ("recurrent", "attention"):
        ranked = [
            v
            for v in variants
            if rows[v.name]["family"] == family and rows[v.name]["validation_bits_per_byte"] is not None
        ]
        if ranked:
            best[family] = min(
                ranked, key=lambda v: validation_rank(rows[v.name]["validation_bits_per_byte"], larger=False)
            )
    if k is None:
        rule2["note"] = f"--claim_bucket={FLAGS.claim_bucket} is not a bucket start"
    elif len(best) < 2:
        rule2["note"] = "needs a recurrent and an attention variant"
    elif not keep.any():
        rule2["note"] = "no qualifying documents"
    else:
        rec, att = best["recurrent"], best["attention"]
        diff = _bucket_difference(
            kept[rec.name, rec.main_mode], kept[att.name, att.main_mode], k, level, resamples
        )
        label = bucket_label(edges, k)
        rule2 |= {
            "bucket": label,
            "recurrent": f"{rec.name} ({rec.main_mode})",
            "attention": f"{att.name} ({att.main_mode})",
            "difference": diff,
        }
        if math.isfinite(diff["low"]):
            word = _classify("less", diff)
            if word in WORD.values():
                rule2["verdict"] = word
            else:  # the verdict stays a verdict word; why it is inconclusive goes in the note
                rule2["note"] = word
        else:
            rule2["note"] = "fewer than 2 qualifying documents reach the bucket"

    # Rule 3: truncation cost against the preset's full-BPTT variant of the longest length.
    truncation = {}
    for v in variants:
        full = [w for w in variants if w.preset == v.preset and not w.overrides]
        if not v.truncated or not full or not keep.any():
            continue
        ref = max(full, key=lambda w: w.length)
        per_bucket = []
        pairable = len(kept[v.name, v.main_mode]) == len(kept[ref.name, ref.main_mode])
        for j in range(len(edges)):
            a, b = kept[v.name, v.main_mode], kept[ref.name, ref.main_mode]
            diff = _bucket_difference(a, b, j, level, resamples)
            cost = _truncation_word("greater", diff)
            row = diff | {"label": bucket_label(edges, j), "class": cost}
            if pairable:  # secondary: seed i of both shares its initialisation (one preset, one size)
                paired = _bucket_difference(a, b, j, level, resamples, paired_seeds=True)
                row["seed_paired"] = paired | {"class": _truncation_word("greater", paired)}
            per_bucket.append(row)
        truncation[v.name] = {"full": ref.name, "mode": v.main_mode, "buckets": per_bucket}
    out = {
        "documents": documents,
        "variants": rows,
        "baselines": baselines,
        "rule2": rule2,
        "truncation": truncation,
    }
    if bpe is not None:  # every run scored the same bytes, so one run's counts are every run's
        first = next(iter(bpe["sums"].values()))[0]
        counts = {k: float(first[k][keep].sum()) for k in BPE_COUNTS}
        out["bpe"] = bpe["about"] | {
            "tokens": counts["bucket_tokens"],
            "bytes": counts["bucket_bytes"],
            "bytes_per_token": counts["bucket_bytes"] / max(counts["bucket_tokens"], 1.0),
            "partial_tokens": counts["partial_tokens"],
            "excluded_bytes": counts["excluded_bytes"],
        }
    return out


def _cell(v: dict[str, float], signed: bool = False, digits: int = 3) -> str:
    if not math.isfinite(v["estimate"]):
        return "—"
    f = f"+.{digits}f" if signed else f".{digits}f"
    if not math.isfinite(v["low"]):
        return f"{v['estimate']:{f}}"
    return f"{v['estimate']:{f}} [{v['low']:{f}}, {v['high']:{f}}]"


def markdown(results: dict[str, Any]) -> str:
    """The report: settings, the three verdicts, bpb and perplexity per bucket, the truncation costs."""
    from seqjax.experiment.positions import bucket_label

    p = results["protocol"]
    level = results["confidence_level"]
    edges = results["position_buckets"]
    labels = [bucket_label(edges, i) for i in range(len(edges))]
    d = results["documents"]
    contrast = results["contrast"]
    lines = [
        f"# Does the model use long context? ({results['study']})",
        "",
        *provenance_lines(results),
        f"- {results['config']} ({results['options']}); {results['tokens_per_batch']:,} tokens per batch at "
        f"every length; {p['train_tokens']:,} training tokens per run, warmup + cosine to the budget; "
        f"learning rate from {p['learning_rates']} chosen on validation (seed 0) per variant; {p['seeds']} "
        f"seeds; parameters matched within ±{p['param_tolerance']:.0%} of one target for every variant.",
        f"- Test documents: **{d['qualifying']} of {d['total']}** have at least {d['min_document_bytes']:,} "
        f"scored bytes and count ({d['qualifying_bytes']:,.0f} bytes). Each is scored "
        + (
            "whole"
            if d.get("max_document_tokens") is None
            else f"over its first {d['max_document_tokens']:,} tokens (the last bucket ends there)"
        )
        + ", summed by byte offset from its start: plain variants in segments of their training length "
        "from a fresh state (*reset*); segment-recurrent ones with the state *carried* through the "
        f"document, and reset as the contrast. bits per byte: lower is better; [low, high]: {level:.0%} "
        "bootstrap over documents and seeds.",
        "",
        "## Verdicts",
        "",
        "Rules (fixed before the run; `experiments/context_use.py`'s docstring): (1) a variant uses context "
        f"beyond the early bucket when the interval of bpb({contrast[0]}) - bpb({contrast[1]}) lies below "
        "zero; (2) recurrent beats attention when the interval of bpb(best recurrent) - bpb(best "
        "attention), each chosen on validation, on the claim bucket lies below zero; (3) truncation costs "
        "bits in a bucket when the interval of bpb(truncated) - bpb(full BPTT) lies above zero.",
        "",
    ]
    r2 = results["rule2"]
    if r2.get("bucket"):
        diff = r2["difference"]
        lines.append(
            f"- (2) {CLAIM_RECURRENT} on {r2['bucket']}: **{r2['verdict']}** — {r2['recurrent']} minus "
            f"{r2['attention']}: {_cell(diff, True, 4)} bpb over {diff['documents']} documents"
            + (f" ({r2['note']})." if "note" in r2 else ".")
        )
    else:
        lines.append(f"- (2) {CLAIM_RECURRENT}: **{r2['verdict']}** ({r2.get('note', '')}).")
    lines += [
        "",
        f"## (1) Bits per byte by position; contrast late - early ({level:.0%} CI)",
        "",
        "| variant | mode | "
        + " | ".join(labels)
        + " | late - early | (1) | lr | parameters | step memory |",
        "|---|---|" + "---:|" * len(labels) + "---:|---|---:|---:|---:|",
    ]
    for name, row in results["variants"].items():
        memory = "n/a" if row["step_memory_bytes"] is None else f"{row['step_memory_bytes'] / 2**20:.1f} MiB"
        for mode, curve in row["modes"].items():
            cells = " | ".join(_cell(b["bits_per_byte"]) for b in curve["buckets"])
            lines.append(
                f"| {name} | {mode} | {cells} | {_cell(curve['contrast'], True)} | {curve['verdict']} | "
                f"{row['learning_rate']:.0e} | {row['parameters']:,} | {memory} |"
            )
    for name, curve in results.get("baselines", {}).items():
        cells = " | ".join(_cell(b["bits_per_byte"]) for b in curve["buckets"])
        lines.append(
            f"| {name} (baseline) | {int(name.split('-')[0]) - 1}-byte context | {cells} | "
            f"{_cell(curve['contrast'], True)} | {curve['verdict']} | — | — | — |"
        )
    if results.get("baselines"):
        lines += [
            "",
            "The n-gram rows are the control for rule (1): fit on the train split and scored on the same "
            "documents and spans, they see only their last few bytes, so a fall of their loss along the "
            "document is the documents' content changing with position, not context use. (Added after "
            "the first §1 and §5 runs; interval over documents only.)",
        ]
    lines += [
        "",
        "Documents reaching each bucket: "
        + ", ".join(
            f"{b['label']}: {b['documents']}"
            for b in next(iter(next(iter(results["variants"].values()))["modes"].values()), {}).get(
                "buckets", []
            )
        ),
        "",
        "## Perplexity per token (a byte: the models read bytes) by position",
        "",
        "| variant | mode | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for name, row in results["variants"].items():
        for mode, curve in row["modes"].items():
            cells = " | ".join(_cell(b["perplexity"], digits=2) for b in curve["buckets"])
            lines.append(f"| {name} | {mode} | {cells} |")
    if results.get("bpe"):
        lines += bpe_markdown(results, labels)
    if results["truncation"]:
        lines += [
            "",
            "## (3) What truncation costs: bpb(truncated) - bpb(full BPTT) by position",
            "",
            "| variant | against | " + " | ".join(labels) + " |",
            "|---|---|" + "---:|" * len(labels),
        ]
        for name, t in results["truncation"].items():
            cells = " | ".join(
                f"{_cell(b, True, 4)} ({b['class']})" if math.isfinite(b["estimate"]) else "—"
                for b in t["buckets"]
            )
            lines.append(f"| {name} ({t['mode']}) | {t['full']} | {cells} |")
        paired_rows = [
            (name, t) for name, t in results["truncation"].items() if "seed_paired" in t["buckets"][0]
        ]
        if paired_rows:
            lines += [
                "",
                "The same differences paired by seed as well as by document (seed i of both variants starts "
                "from the same initialisation, so what the seeds share cancels). A secondary analysis, added "
                "after the first run: the verdict is the table above.",
                "",
                "| variant | against | " + " | ".join(labels) + " |",
                "|---|---|" + "---:|" * len(labels),
            ]
            for name, t in paired_rows:
                cells = " | ".join(
                    f"{_cell(b['seed_paired'], True, 4)} ({b['seed_paired']['class']})"
                    if math.isfinite(b["seed_paired"]["estimate"])
                    else "—"
                    for b in t["buckets"]
                )
                lines.append(f"| {name} ({t['mode']}) | {t['full']} | {cells} |")
    lines += ["", "Validation bits per byte by learning rate (seed 0):", ""]
    for name, row in results["variants"].items():
        shown = ", ".join(f"{rate}: {value:.4f}" for rate, value in row["grid"].items() if value is not None)
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"


def bpe_markdown(results: dict[str, Any], labels: Sequence[str]) -> list[str]:
    """The report's section on perplexity per BPE token: what was counted, the caveat, the table."""
    b = results["bpe"]
    lines = [
        "",
        f"## Perplexity per BPE token by position ({results['confidence_level']:.0%} CI)",
        "",
        f"The same scores regrouped by BPE token (exact by the chain rule: a token's log-probability is the "
        f"sum of its bytes'): a byte-level BPE, vocabulary {b['vocab_size']:,} ({b['trained_vocab_size']:,} "
        f"trained), trained on the train split of `{b['corpus']}` ({b['train_documents']:,} documents, "
        f"{b['train_bytes']:,} bytes; `seqjax.data.bpe`). Perplexity per BPE token = 2^(bits of the counted "
        "tokens' bytes / counted tokens); a token goes with all its bytes to the bucket of its first byte; a "
        "token not wholly scored is left out with its bytes (each document's first token, whose first byte "
        "is never a target, and the token across the end of the scored span), as is a scored byte outside "
        f"the document (the next document's first byte). Counted: {b['tokens']:,.0f} tokens, "
        f"{b['bytes']:,.0f} bytes ({b['bytes_per_token']:.2f} bytes per token); left out: "
        f"{b['partial_tokens']:,.0f} partly scored tokens, {b['excluded_bytes']:,.0f} scored bytes. "
        "[low, high]: the bootstrap over documents and seeds, as for bits per byte.",
        "",
        "Caveat: these are not comparable with a paper's perplexities (e.g. 18.3 vs 24.7), whose corpus "
        "and tokenizer are unknown; perplexity per token depends on both (here: this BPE on this corpus).",
        "",
        "| variant | mode | " + " | ".join(labels) + " | all |",
        "|---|---|" + "---:|" * (len(labels) + 1),
    ]
    for name, row in results["variants"].items():
        for mode, curve in row["modes"].items():
            if "bpe" in curve:
                cells = [
                    _cell(x["perplexity"], digits=2)
                    for x in (*curve["bpe"]["buckets"], curve["bpe"]["overall"])
                ]
                lines.append(f"| {name} | {mode} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)  # SIGTERM/SIGINT: finished runs are kept, the next call resumes


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    from seqjax.experiment.matching import count_parameters
    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.protocol import (
        retrain_missing_checkpoints,
        run_comparison,
        use_compilation_cache,
    )
    from seqjax.experiment.sweep import finished_models_at

    if FLAGS.replot:
        out = ROOT / FLAGS.out.format(study=FLAGS.study, size=FLAGS.size, platform=jax.default_backend())
        json_path = out.with_name(out.name + ".json")
        if not json_path.exists():
            raise app.UsageError(
                f"--replot: no {json_path}; give --out (without extension) of a finished run's results."
            )
        draw_plots(out, json.loads(json_path.read_text()))
        return
    names = FLAGS.variants or default_variants(FLAGS.study, FLAGS.size, FLAGS.truncation_length)
    variants = [parse_variant(n) for n in names]
    edges = [int(e) for e in FLAGS.position_buckets]
    configs = _configs(variants)
    workdir = Path(FLAGS.workdir)
    settings = driver_settings(FLAGS)
    prepare_workdir(
        workdir,
        protocol_record(
            FLAGS,
            settings,
            config=FLAGS.config,
            options=FLAGS.options,
            **data_record(FLAGS.config),
        ),
        fresh=FLAGS.fresh,
    )
    if FLAGS.compilation_cache:
        use_compilation_cache(workdir / ".jax_cache")
    # One parameter target for every length: the largest count among all variants.
    target = max(count_parameters(c) for c in configs.values())
    trained: dict[str, Any] = {}
    for length in sorted({v.length for v in variants}):
        group = [v for v in variants if v.length == length]
        if FLAGS.reuse_runs and not any(v.overrides for v in group):
            # The crossover's own configs and per-length matching, so its runs' digests match.
            reused = finished_models_at(FLAGS.reuse_runs, length, [v.preset for v in group])
            wanted = [v.preset for v in group]
            configs_here = {v.preset: configs[v.name] for v in group} | _other_swept_configs(
                reused, wanted, length
            )
            by_preset = _read_reused(configs_here, settings, reused, length)
            # Carried runs keep no checkpoints: those are trained again here, checked against their records.
            by_preset = retrain_missing_checkpoints(
                {p: by_preset[p] for p in wanted},
                configs_here,
                settings,
                workdir / "retrained" / f"L{length}",
                length=length,
            )
            trained |= {v.name: by_preset[v.preset] for v in group}
            continue
        configs_here = {v.name: configs[v.name] for v in group}
        trained |= run_comparison(
            configs_here, settings, workdir / f"L{length}", length=length, match_target=target
        )
    level = 0.95
    summary = summarize(
        trained, variants, edges, level, FLAGS.resamples, baseline_config=next(iter(configs.values()))
    )
    platform = jax.default_backend()
    results = {
        **run_header(sys.argv, platform),
        "study": FLAGS.study,
        "config": FLAGS.config,
        "options": FLAGS.options,
        "size": FLAGS.size,
        "tokens_per_batch": FLAGS.tokens_per_batch,
        "position_buckets": edges,
        "contrast": [int(c) for c in FLAGS.contrast],
        "claim_bucket": FLAGS.claim_bucket,
        "confidence_level": level,
        "protocol": {
            "train_tokens": settings.train_tokens,
            "learning_rates": list(settings.learning_rates),
            "seeds": settings.seeds,
            "param_tolerance": settings.param_tolerance,
            "parameter_target": target,
        },
        **summary,
    }
    out = ROOT / FLAGS.out.format(study=FLAGS.study, size=FLAGS.size, platform=platform)
    write_results(out, results, markdown(results))
    draw_plots(out, results)


def draw_plots(out: Path, results: dict[str, Any]) -> None:
    """`<out>_bpb.png` and `<out>_perplexity.png`: each variant's and mode's loss by position, from the
    results (as written to `<out>.json`)."""
    from seqjax.experiment import plots

    curves = {
        f"{name}, {mode}": curve
        for name, row in results["variants"].items()
        for mode, curve in row["modes"].items()
    }
    if curves:
        title = f"{results['options']}: loss by position"
        plots.metric_by_position(curves, f"{out}_bpb.png", title=title, baselines=results["baselines"])
        plots.metric_by_position(curves, f"{out}_perplexity.png", metric="perplexity", title=title)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
