"""`BackboneConfig`: a backbone described by plain values (dict/tuple/str/int/float), and the mixers.

    cfg = BackboneConfig(
        d_model=256, num_layers=6, vocab_size=16, encoder="dna",
        pattern=("rnn", "rnn", "swa"),                       # cycled to num_layers
        mixers={"rnn": "lstm",                               # a registered cell name, default sizes
                "swa": {"cell": "sliding_window_attention", "window": 128, "max_length": 4096}},
    )

A mixer spec is one of:
- a registered cell name (`"lstm"`), built with the defaults below;
- a dict `{"cell": name, **hyperparameters}` (ml_collections-friendly);
- a pair `(name, {hyperparameters})`;
- a cell instance (used as is).
A pattern entry that is not a key of `mixers` is read as a registered cell name with no hyperparameters.

Defaults filled in when a spec leaves them out, so that each cell reads `d_model` features:
- `hidden_size` (RNNs, SSMs) and `d_model` (Mamba) = d_model;
- `num_heads`/`head_dim`: head_dim = min(64, d_model) and num_heads = d_model // head_dim when both are
  missing; one given → the other is d_model // it;
- `dtype`/`param_dtype` = the backbone's, when those are not float32.
The extra key `"bidirectional": True` on a cell without such a field wraps it in
`cells.Bidirectional.of(cell)` (whole-sequence models only: it has no step form).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from seqjax import cells
from seqjax.cells import registry
from seqjax.cells.base import Cell
from seqjax.models.block import MLP_ACTIVATIONS, NORMS, REMAT_POLICIES
from seqjax.models.encoders import DNA_VOCAB, ENCODERS

__all__ = ["BackboneConfig", "build_mixer", "normalize_mixers"]


def _freeze(value: Any) -> Any:
    """Lists → tuples, dicts → sorted item tuples, so a config is hashable (flax module attribute)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw_kwargs(kwargs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: v for k, v in kwargs}


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _dtype(value: Any) -> jnp.dtype:
    return jnp.dtype(value)


def _dtype_name(value: Any) -> str:
    return jnp.dtype(value).name


def normalize_mixers(mixers: Any) -> tuple[tuple[str, Any], ...]:
    """Any accepted `mixers` form → a sorted tuple of (name, spec); spec is a Cell or (cell_name, kwargs)."""
    if mixers is None:
        return ()
    if hasattr(mixers, "to_dict"):  # ml_collections.ConfigDict
        mixers = mixers.to_dict()
    if isinstance(mixers, tuple) and all(
        isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) for m in mixers
    ):
        items = list(mixers)
    elif isinstance(mixers, Mapping):
        items = list(mixers.items())
    else:
        raise TypeError(
            f"BackboneConfig.mixers: expected a dict of name → spec, got {type(mixers).__name__}."
        )
    out = []
    for name, spec in items:
        if isinstance(spec, str):
            norm: Any = (spec.lower(), ())
        elif isinstance(spec, Mapping) or hasattr(spec, "to_dict"):
            spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
            if "cell" not in spec:
                raise ValueError(
                    f"BackboneConfig.mixers[{name!r}]: a dict spec needs a 'cell' key naming a registered "
                    f"cell (one of {', '.join(cells.names())}); got keys {sorted(spec)}."
                )
            cell_name = str(spec.pop("cell")).lower()
            norm = (cell_name, _freeze(spec))
        elif isinstance(spec, list | tuple) and len(spec) == 2 and isinstance(spec[0], str):
            kwargs = spec[1]
            if isinstance(kwargs, tuple) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in kwargs):
                kwargs = dict(kwargs)
            norm = (spec[0].lower(), _freeze(dict(kwargs or {})))
        elif callable(getattr(spec, "init", None)) and hasattr(spec, "output_size"):
            norm = spec
        else:
            raise TypeError(
                f"BackboneConfig.mixers[{name!r}]: expected a cell name, {{'cell': name, ...}}, "
                f"(name, kwargs) or a cell instance; got {spec!r}."
            )
        out.append((str(name), norm))
    return tuple(sorted(out, key=lambda kv: kv[0]))


def _cell_class(cell_name: str, where: str) -> type:
    try:
        return registry.lookup(cell_name)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def build_mixer(
    spec: Any, *, d_model: int, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, where: str = "mixer"
) -> Cell:
    """A normalised mixer spec → a cell that reads `d_model` features (defaults as in the module doc)."""
    if not isinstance(spec, tuple):
        return spec  # a cell instance, used as given
    cell_name, frozen = spec
    cls = _cell_class(cell_name, where)
    kwargs = _thaw_kwargs(frozen)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    wrap_bidirectional = False
    if "bidirectional" in kwargs and "bidirectional" not in fields:
        wrap_bidirectional = bool(kwargs.pop("bidirectional"))
    if "hidden_size" in fields:
        kwargs.setdefault("hidden_size", d_model)
    if "d_model" in fields:
        kwargs.setdefault("d_model", d_model)
        if int(kwargs["d_model"]) != int(d_model):
            raise ValueError(
                f"{where}: {cls.__name__} has d_model={kwargs['d_model']} but the backbone's d_model is "
                f"{d_model}; leave it out of the mixer spec."
            )
    if "num_heads" in fields and "head_dim" in fields:
        nh, hd = kwargs.get("num_heads"), kwargs.get("head_dim")
        if nh is None and hd is None:
            hd = min(64, d_model)
            nh = max(1, d_model // hd)
        elif nh is None or hd is None:
            given = int(nh if nh is not None else hd)
            if d_model % given:
                raise ValueError(
                    f"{where}: d_model={d_model} is not divisible by "
                    f"{'num_heads' if nh is not None else 'head_dim'}={given}; give both num_heads and "
                    f"head_dim."
                )
            nh, hd = (given, d_model // given) if nh is not None else (d_model // given, given)
        kwargs["num_heads"], kwargs["head_dim"] = int(nh), int(hd)
    for key, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if key in kwargs:
            kwargs[key] = _dtype(kwargs[key])
        elif key in fields and _dtype(value) != jnp.float32:
            kwargs[key] = _dtype(value)
    try:
        cell = registry.get(cell_name, **kwargs)
    except TypeError as err:
        raise TypeError(f"{where}: {err}") from err
    if wrap_bidirectional:
        cell = cells.Bidirectional.of(cell)
    return cell


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Everything a `Backbone` needs, in plain values; see the module docstring.

    Attributes:
      d_model: residual-stream width.
      num_layers: number of blocks.
      pattern: mixer names cycled over the layers (a tuple, or a comma-separated string).
      mixers: name → mixer spec (see the module docstring).
      encoder: "embedding" (token ids), "dna" (IUPAC nucleotides), "linear" (continuous features) or
        "none" (inputs are already [*, time, d_model] features).
      vocab_size: token vocabulary (embedding encoder, and the LM head); for "dna" it defaults to 16.
      input_size: features per step for the "linear" encoder.
      dna_input: "auto", "ids" or "bytes" (see `seqjax.models.encoders`).
      mlp_expansion, mlp_activation, norm, norm_eps, prenorm, dropout_rate, use_bias: the blocks' options.
      final_norm: a norm after the last block.
      remat: a `REMAT_POLICIES` name ("none", "full", "dots_saveable", "nothing_saveable", ...).
      segment_remat: 0 (off), or N: every layer whose cell carries a fixed-size state (all but softmax
        attention's KV cache and the cells with no token-by-token form: Bidirectional, Linformer,
        Longformer) runs its `apply` in rematerialised segments of N tokens (`cells.SegmentRemat`), so
        training memory stops growing with the cells' activations; the function and the parameters are
        unchanged. With `remat`, the blocks' MLPs are rematerialised too.
      dtype: compute dtype (str); param_dtype: parameter dtype (str).
    """

    d_model: int = 64
    num_layers: int = 2
    pattern: Any = ("lstm",)
    mixers: Any = ()
    encoder: str = "embedding"
    vocab_size: int | None = None
    input_size: int | None = None
    dna_input: str = "auto"
    mlp_expansion: float = 4.0
    mlp_activation: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    prenorm: bool = True
    final_norm: bool = True
    dropout_rate: float = 0.0
    use_bias: bool = False
    remat: str = "none"
    segment_remat: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        pattern = self.pattern
        if isinstance(pattern, str):
            pattern = [pattern]
        # `--config.model.pattern=lstm,swa` reaches here as ("lstm,swa",): ml_collections keeps a
        # tuple field's command-line string whole, so every entry is split on commas
        pattern = tuple(p.strip() for entry in pattern for p in str(entry).split(",") if p.strip())
        if not pattern:
            raise ValueError("BackboneConfig.pattern is empty; give at least one mixer name.")
        set_("pattern", pattern)
        set_("mixers", normalize_mixers(self.mixers))
        set_("dtype", _dtype_name(self.dtype))
        set_("param_dtype", _dtype_name(self.param_dtype))
        if int(self.d_model) < 1 or int(self.num_layers) < 1:
            raise ValueError(
                f"BackboneConfig: d_model and num_layers must be >= 1, got {self.d_model}, {self.num_layers}."
            )
        if self.encoder not in (*ENCODERS, "none"):
            raise ValueError(
                f"BackboneConfig.encoder: unknown {self.encoder!r}; choose one of {(*ENCODERS, 'none')}."
            )
        if self.encoder == "dna" and self.vocab_size is None:
            set_("vocab_size", len(DNA_VOCAB))
        if self.encoder == "embedding" and not self.vocab_size:
            raise ValueError("BackboneConfig: encoder='embedding' needs vocab_size.")
        if self.encoder == "linear" and not self.input_size:
            raise ValueError("BackboneConfig: encoder='linear' needs input_size (features per step).")
        if self.norm not in NORMS:
            raise ValueError(f"BackboneConfig.norm: unknown {self.norm!r}; choose one of {NORMS}.")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"BackboneConfig.mlp_activation: unknown {self.mlp_activation!r}; choose one of "
                f"{tuple(MLP_ACTIVATIONS)}."
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(
                f"BackboneConfig.remat: unknown policy {self.remat!r}; choose one of {tuple(REMAT_POLICIES)}."
            )
        if (
            isinstance(self.segment_remat, bool)
            or not isinstance(self.segment_remat, int)
            or self.segment_remat < 0
        ):
            raise ValueError(
                f"BackboneConfig.segment_remat must be 0 (off) or a positive number of tokens, got "
                f"{self.segment_remat!r}."
            )
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"BackboneConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
        # Build every mixer once so a bad spec fails here, naming the mixer, not deep inside init.
        shared: dict[str, tuple[str, Any]] = {}  # cell type -> (first mixer, its shared parameters' shapes)
        for name in dict.fromkeys(pattern):
            cell = self.mixer_cell(name)
            try:
                shapes = jax.eval_shape(lambda c=cell: c.init(jax.random.PRNGKey(0), int(self.d_model)))
            except Exception as err:
                raise ValueError(
                    f"BackboneConfig: mixer {name!r} ({type(cell).__name__}) cannot read "
                    f"d_model={self.d_model} features: {err}"
                ) from err
            if cell.shared_params():
                mine = {p: shapes[p] for p in cell.shared_params()}
                first, theirs = shared.setdefault(cell.name, (name, mine))
                if theirs != mine:
                    raise ValueError(
                        f"BackboneConfig: mixers {first!r} and {name!r} are {type(cell).__name__} layers "
                        f"whose {list(mine)} the model holds once for all of them ({_sharing_hint(cell)}), "
                        f"but they build it in different shapes: {_shapes(theirs)} vs {_shapes(mine)}. Give "
                        f"them the same sizes, or let each layer hold its own."
                    )

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Any) -> BackboneConfig:
        """From a dict or ml_collections ConfigDict; unknown keys raise, naming the closest field."""
        if hasattr(values, "to_dict"):
            values = values.to_dict()
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"BackboneConfig: unknown key(s) {', '.join(hints)}; known keys: {', '.join(sorted(known))}."
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, dicts, str, numbers), accepted back by `from_dict`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["pattern"] = list(self.pattern)
        mixers = {}
        for name, spec in self.mixers:
            if isinstance(spec, tuple):
                mixers[name] = {"cell": spec[0], **{k: _to_plain(v) for k, v in spec[1]}}
            else:
                mixers[name] = _cell_to_dict(spec)
        out["mixers"] = mixers
        return out

    # -- derived -------------------------------------------------------------------------------------------
    def mixer_spec(self, name: str) -> Any:
        specs = dict(self.mixers)
        if name in specs:
            return specs[name]
        if name.lower() in registry.names():
            return (name.lower(), ())
        raise ValueError(
            f"BackboneConfig: pattern entry {name!r} is neither a key of `mixers` ({sorted(specs)}) nor a "
            f"registered cell ({', '.join(cells.names())})."
        )

    def mixer_cell(self, name: str) -> Cell:
        cell = build_mixer(
            self.mixer_spec(name),
            d_model=int(self.d_model),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            where=f"mixer {name!r}",
        )
        if self.segment_remat and _carries_fixed_state(cell):
            cell = cells.SegmentRemat(cell, segment_length=int(self.segment_remat))
        return cell

    def layer_mixers(self) -> tuple[str, ...]:
        """The mixer name of every layer (the pattern cycled to num_layers)."""
        return tuple(self.pattern[i % len(self.pattern)] for i in range(int(self.num_layers)))

    def layer_cells(self) -> tuple[Cell, ...]:
        """The cell of every layer."""
        built = {name: self.mixer_cell(name) for name in dict.fromkeys(self.pattern)}
        return tuple(built[name] for name in self.layer_mixers())


def _carries_fixed_state(cell: Cell) -> bool:
    """Whether `cell`'s apply can be cut at any token and resumed from a fixed-size state (what
    `segment_remat` needs): not a growing KV cache, and a token-by-token form exists."""
    return not cell.state_grows_with_sequence and cell.step_unsupported(streaming=False) is None


def _shapes(tree: dict[str, Any]) -> str:
    return ", ".join(f"{name} {x.dtype}{list(x.shape)}" for name, x in tree.items())


def _sharing_hint(cell: Cell) -> str:
    """How `cell` came to share parameters across layers, for errors."""
    sharing = getattr(cell, "sharing", None)
    return f"sharing={sharing!r}" if sharing is not None else f"{type(cell).__name__}.shared_params()"


def _cell_to_dict(cell: Cell) -> dict[str, Any]:
    if isinstance(cell, cells.Bidirectional):
        inner = _cell_to_dict(cell.forward)
        inner["bidirectional"] = True
        return inner
    out: dict[str, Any] = {"cell": getattr(cell, "name", type(cell).__name__.lower())}
    for f in dataclasses.fields(cell):
        if not f.init:
            continue
        value = getattr(cell, f.name)
        if f.default is not dataclasses.MISSING and value is f.default:
            continue
        if f.name in ("dtype", "param_dtype"):
            value = _dtype_name(value)
        out[f.name] = _to_plain(value) if isinstance(value, tuple) else value
    return out
