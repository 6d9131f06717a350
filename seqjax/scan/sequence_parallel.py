"""Sequence parallelism for the linear engines: the time axis split over a named mesh axis.

A linear recurrence h_t = a_t ⊙ h_{t−1} + b_t composes associatively (`seqjax.scan.combine`), so a
sequence cut into n shards, one per device of the mesh axis `sequence_axis`, runs in three steps:

1. every shard computes its summary (A, H): the product of its decays and its last state from a zero
   state (diagonal recurrence and selective scan: a scan from zero of which only the last state is
   kept; matrix state: one contraction, Σ_j exp(Σ_{s>j} log γ_s) k_j v_jᵀ, no engine pass);
2. the n summaries are all-gathered (n · state elements per device) and every shard folds them from
   the initial state h0, h ← A_j ⊙ h + H_j over the shards before it: the state entering it, h_in;
3. every shard runs the single-device engine on its tokens from h_in.

A reset sets that token's decay to 0, so a shard's product A is 0 once a reset occurred in it and the
incoming state stops at the reset, wherever the reset falls: on the shard's first token, or inside.
Padding has decay 1 and input 0, so it passes the incoming state through, across any boundary. The
reverse direction (`reverse=True`) folds from the last shard, with h0 entering at the end.

The delta rules' transitions are matrices independent of the state, so their summaries are affine,
(P, Q) with the final state P S_in + Q (`_sequence_parallel_affine`). The mLSTM's memory is linear
only once unstabilised (C̃ = e^m C) and its stabiliser m a max-plus recurrence: a shard's summary is
its summed log forget gates F, its stabiliser M and memory C from the neutral memory (m = −∞), and the
fold is m' = max(F + m, M), C' = exp(F + m − m') C + exp(M − m') C_local (`sequence_parallel_mlstm`).

Why run the engine from h_in rather than correct a run from zero: the correction h_t += (Π_{s≤t} a_s) ⊙
h_in needs the cumulative decay of every token, one more array of the states' size (for the selective
scan [B, L, D, N], which it never forms whole) and one more scan of the same cost; the run from h_in
costs the same, keeps nothing more, and is the single-device engine itself (any backend, the same
rounding inside a shard). For the matrix state the correction would be cheap in work (exp(Σ log γ) ·
S_inᵀ q_t, one matmul per head) but not in memory: its product and the q-gradient it adds cost 4
[T / n, H, d] buffers per device more in XLA's plan (measured at 64k tokens, 2 shards: 187 MiB against
171 MiB for the summary contraction and the run from S_in).

Gradients:
- diagonal (`sequence_parallel_linear_recurrence`): a custom VJP whose adjoint is itself the reverse
  sequence-parallel recurrence, λ_t = g_t + a_{t+1} λ_{t+1}, with a halo of one decay (a_{t+1} of the
  next shard's first token, by `ppermute`). It keeps a, the states and each shard's h_in, as the
  single-device engine keeps a, the states and h0: per-device memory is the single-device engine's
  on T / n tokens.
- matrix state, selective scan, delta rules and mLSTM: JAX's autodiff through `shard_map`: the
  all-gather's transpose is a reduce-scatter, exact; the engines inside keep their own memory-lean
  backward passes.

Every function takes global arrays (time on its usual axis, sharded or not) and a mesh: `mesh=None`
uses the one set by `jax.set_mesh`. Only `sequence_axis` is manual inside; other mesh axes (data,
model) stay under the compiler's automatic sharding. A length that the shards do not divide is padded
at the end with padding tokens and cut back; lengths that divide avoid that reshuffle. With one shard
on `sequence_axis` each function is the single-device engine.

Communication per call: one all-gather of n summaries (two state-sized arrays per shard), in the
backward pass the same again plus (diagonal) one token of decays by `ppermute`. A log-depth exchange
(Hillis–Steele over the shards with `ppermute`) would send log n instead of n summaries; at n ≤ 8
the all-gather is one collective instead of three and the summaries are small.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan import delta_rule as delta_rule_lib
from seqjax.scan import diagonal
from seqjax.scan import generalized_delta_rule as generalized_delta_rule_lib
from seqjax.scan import mlstm as mlstm_lib
from seqjax.scan.matrix_recurrence import linear_attention, sum_after
from seqjax.scan.selective import selective_scan

__all__ = [
    "sequence_halo",
    "sequence_parallel_delta_rule",
    "sequence_parallel_generalized_delta_rule",
    "sequence_parallel_linear_attention",
    "sequence_parallel_linear_recurrence",
    "sequence_parallel_mlstm",
    "sequence_parallel_selective_scan",
    "sequence_shards",
]

Mesh = Any  # jax.sharding.Mesh or AbstractMesh


# --------------------------------------------------------------------------------------------------
# Mesh and layout helpers
# --------------------------------------------------------------------------------------------------
def _resolve_mesh(fn: str, mesh: Mesh | None, axis_name: str) -> Mesh:
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            raise ValueError(
                f"{fn}: sequence_axis={axis_name!r} needs a device mesh: pass `mesh=`, or call inside "
                f"`with jax.set_mesh(mesh):` (the trainer does)."
            )
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{fn}: the mesh has axes {tuple(mesh.axis_names)} but no {axis_name!r}, the sequence axis; "
            f"build the mesh with it (e.g. jax.make_mesh((4,), ({axis_name!r},))) or pass sequence_axis="
            f"None."
        )
    return mesh


def sequence_shards(sequence_axis: str | None, mesh: Mesh | None = None) -> int:
    """How many shards the time axis is split into: the size of `sequence_axis` in `mesh` (or the mesh
    set by `jax.set_mesh`); 1 when `sequence_axis` is None or no mesh is set.

        >>> sequence_shards(None)
        1
    """
    if sequence_axis is None:
        return 1
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            return 1
    return int(dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True)).get(sequence_axis, 1))


def _time_spec(time_axis: int, axis_name: str) -> P:
    return P(*([None] * time_axis), axis_name)


def _pad_time(x: jax.Array | None, time_axis: int, pad: int, fill: Any = 0) -> jax.Array | None:
    if x is None or not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[time_axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=fill)


def _scan_fold(step, h0: Any, summaries: Any, reverse: bool = False) -> tuple[Any, Any]:
    """The state entering every shard ([n, ...]) and the final state: h ← step(h, summary_j) over the
    gathered summaries (pytrees with a leading shard axis), from the last shard when `reverse`."""
    final, entering = lax.scan(lambda h, summary: (step(h, summary), h), h0, summaries, reverse=reverse)
    return entering, final


def _linear_step(expand):
    """The fold's step of a linear recurrence: h ← expand(A) ⊙ h + H for a shard's summary (A, H)."""
    return lambda h, summary: expand(summary[0]) * h + summary[1]


def _fold(decays: jax.Array, lasts: jax.Array, h0: jax.Array, reverse: bool, expand) -> tuple[jax.Array, ...]:
    """The state entering every shard and the final state, from the gathered summaries [n, ...].

    h ← expand(A_j) ⊙ h + H_j shard by shard (from the last shard when `reverse`), starting at h0.
    """
    return _scan_fold(_linear_step(expand), h0, (decays, lasts), reverse)


def _pad_to_shards(
    arrays: dict[str, jax.Array | None], time_axis: int, length: int, n: int
) -> tuple[dict[str, jax.Array | None], int]:
    """`arrays` (name -> [*batch, T, ...] or None, with the flags "mask" and "resets" [*batch, T]) padded
    at the end to a multiple of n tokens with padding tokens (mask False, no reset, zeros elsewhere: the
    engines pass their state through them and output zeros), and the number of tokens added."""
    pad = -(-length // n) * n - length
    if not pad:
        return arrays, 0
    mask = arrays.get("mask")
    if mask is None:
        lead = next(x for x in arrays.values() if x is not None).shape[: time_axis + 1]
        mask = jnp.ones(lead, bool)
    arrays = {
        name: _pad_time(x, time_axis, pad, False if name in ("mask", "resets") else 0)
        for name, x in arrays.items()
    }
    arrays["mask"] = _pad_time(mask, time_axis, pad, False)
    return arrays, pad


def _run_shards(
    body,
    replicated: Any,
    arrays: dict[str, jax.Array | None],
    *,
    time_axis: int,
    length: int,
    sequence_axis: str,
    mesh: Mesh,
) -> tuple[jax.Array, Any]:
    """`body(replicated, **shard)` -> (ys, final state) on every shard of `sequence_axis`, `shard` the
    shard's part of `arrays` (split along `time_axis`; None entries left out), `replicated` (a pytree)
    whole on every shard. Returns ys cut back to `length` tokens and the last shard's final state.

    The engines' loops start from fresh (replicated) buffers, which shard_map's replication check refuses
    to carry next to per-shard values: the check is off here. The final state then leaves every shard
    stacked and only the last shard's copy is used, so its cotangent reaches one fold.
    """
    names = [name for name, x in arrays.items() if x is not None]
    spec = _time_spec(time_axis, sequence_axis)

    def run(replicated, *xs):
        ys, final = body(replicated, **dict(zip(names, xs, strict=True)))
        return ys, jax.tree.map(lambda a: a[None], final)

    # jit: called eagerly, a shard_map runs its body op by op on every shard; inside a jit it is inlined.
    ys, finals = jax.jit(
        jax.shard_map(
            run,
            mesh=mesh,
            in_specs=(P(), *([spec] * len(names))),
            out_specs=(spec, P(sequence_axis)),
            axis_names={sequence_axis},
            check_vma=False,
        )
    )(replicated, *(arrays[name] for name in names))
    if ys.shape[time_axis] != length:
        ys = lax.slice_in_dim(ys, 0, length, axis=time_axis)
    return ys, jax.tree.map(lambda a: a[-1], finals)


def _gather(x: jax.Array, axis_name: str, *, invariant: bool = True) -> jax.Array:
    """[n, ...] of every shard's `x`, the same on every shard.

    `invariant=True` types the result as replicated for `shard_map`'s replication check (the fold then
    carries it next to the replicated h0); its transpose assumes a replicated cotangent, so autodiff
    through a body with the check off needs `invariant=False` (a plain all-gather, whose transpose is
    the reduce-scatter that sums every shard's cotangent).
    """
    return lax.all_gather(x, axis_name, to="invarying" if invariant else "varying")


def _fold_shards(step, h0: Any, summary: Any, axis_name: str) -> tuple[Any, Any]:
    """Inside `shard_map`: every shard's `summary` (a pytree) all-gathered and folded from h0 by
    `step(h, summary_j)` over the shards in order: (the state entering this shard, the final state).

    Plain all-gathers (`invariant=False`), for the bodies that autodiff differentiates with the
    replication check off.
    """
    gathered = jax.tree.map(lambda x: _gather(x, axis_name, invariant=False), summary)
    entering, final = _scan_fold(step, h0, gathered)
    index = lax.axis_index(axis_name)
    return jax.tree.map(lambda e: e[index], entering), final


# --------------------------------------------------------------------------------------------------
# Diagonal recurrence
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one sequence-parallel diagonal recurrence."""

    mesh: Any
    axis_name: str
    time_axis: int
    reverse: bool
    method: str
    chunk_size: int


def _local_summary(plan: _Plan, a: jax.Array, b: jax.Array, reverse: bool) -> tuple[jax.Array, jax.Array]:
    """(Π a, last state from zero) of one shard; time-major. The sequential backend carries only the
    state; the others run as the engine (log depth on accelerators) and keep the last state."""
    zeros = jnp.zeros_like(b[0])
    if plan.method == "sequential":
        last, _ = lax.scan(lambda h, ab: (ab[0] * h + ab[1], None), zeros, (a, b), reverse=reverse)
    else:
        last = diagonal._run(plan.method, a, b, zeros, reverse, plan.chunk_size)[0 if reverse else -1]
    return jnp.prod(a, axis=0), last


def _diag_shard(plan: _Plan, a, b, h0, reverse):
    """One shard's states (time-major a, b), its incoming state and the global final state."""
    decay, last = _local_summary(plan, a, b, reverse)
    entering, final = _fold(
        _gather(decay, plan.axis_name), _gather(last, plan.axis_name), h0, reverse, lambda x: x
    )
    h_in = entering[lax.axis_index(plan.axis_name)]
    hs = diagonal._run(plan.method, a, b, h_in, reverse, plan.chunk_size)
    return hs, h_in, final


def _diag_forward_map(plan: _Plan):
    t = plan.time_axis
    spec = _time_spec(t, plan.axis_name)

    def body(a, b, h0):
        a, b = jnp.moveaxis(a, t, 0), jnp.moveaxis(b, t, 0)
        hs, h_in, final = _diag_shard(plan, a, b, h0, plan.reverse)
        return jnp.moveaxis(hs, 0, t), h_in[None], final

    return jax.jit(  # (eagerly, a shard_map runs op by op on every shard)
        jax.shard_map(
            body,
            mesh=plan.mesh,
            in_specs=(spec, spec, P()),
            out_specs=(spec, P(plan.axis_name), P()),
            axis_names={plan.axis_name},
        )
    )


def _diag_backward_map(plan: _Plan):
    t, name = plan.time_axis, plan.axis_name
    spec = _time_spec(t, name)
    n = sequence_shards(name, plan.mesh)

    def body(a, hs, h_in, g, g_final):
        a, hs, g = jnp.moveaxis(a, t, 0), jnp.moveaxis(hs, t, 0), jnp.moveaxis(g, t, 0)
        h_in = h_in[0]
        idx = lax.axis_index(name)
        # λ_t = g_t + a_{t+1} λ_{t+1}: a shifted by one token against the scan, across shard boundaries
        # (a halo of one token). The final state's cotangent enters as the adjoint's initial state,
        # through a_{T+1} = 1 after the last token.
        end_shard = 0 if plan.reverse else n - 1
        if plan.reverse:
            halo = lax.ppermute(a[-1:], name, [(i, i + 1) for i in range(n - 1)])
            halo = jnp.where(idx == end_shard, jnp.ones_like(halo), halo)
            a_next = jnp.concatenate([halo, a[:-1]], axis=0)
            h_prev = jnp.concatenate([hs[1:], h_in[None]], axis=0)
        else:
            halo = lax.ppermute(a[:1], name, [(i + 1, i) for i in range(n - 1)])
            halo = jnp.where(idx == end_shard, jnp.ones_like(halo), halo)
            a_next = jnp.concatenate([a[1:], halo], axis=0)
            h_prev = jnp.concatenate([h_in[None], hs[:-1]], axis=0)
        lam, _, _ = _diag_shard(plan, a_next, g, g_final, not plan.reverse)
        first = -1 if plan.reverse else 0
        first_shard = n - 1 if plan.reverse else 0
        dh0 = jnp.where(idx == first_shard, a[first] * lam[first], jnp.zeros_like(lam[first]))
        dh0 = lax.psum(dh0, name)
        return jnp.moveaxis(lam * h_prev, 0, t), jnp.moveaxis(lam, 0, t), dh0

    return jax.jit(  # (eagerly, a shard_map runs op by op on every shard)
        jax.shard_map(
            body,
            mesh=plan.mesh,
            in_specs=(spec, spec, P(name), spec, P()),
            out_specs=(spec, spec, P()),
            axis_names={name},
        )
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _diag(plan: _Plan, a, b, h0):
    hs, _, final = _diag_forward_map(plan)(a, b, h0)
    return hs, final


def _diag_fwd(plan, a, b, h0):
    hs, h_in, final = _diag_forward_map(plan)(a, b, h0)
    return (hs, final), (a, hs, h_in)


def _diag_bwd(plan, res, cts):
    a, hs, h_in = res
    g, g_final = cts
    da, db, dh0 = _diag_backward_map(plan)(a, hs, h_in, g, g_final)
    return da, db, dh0


_diag.defvjp(_diag_fwd, _diag_bwd)


def sequence_parallel_linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    reverse: bool = False,
    method: diagonal.Method = "auto",
    chunk_size: int = diagonal.DEFAULT_CHUNK,
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`seqjax.scan.linear_recurrence` with the time axis split over the mesh axis `sequence_axis`.

    Same arguments and results as `linear_recurrence` (a, b, h0, axis, resets, mask, reverse, method,
    chunk_size), plus `sequence_axis` (a mesh axis name) and `mesh` (None: the mesh of
    `jax.set_mesh`). `method="auto"` chooses for the per-shard length. Values equal the single-device
    engine's up to rounding; gradients come from the sequence-parallel adjoint (module doc).

        >>> import jax, jax.numpy as jnp
        >>> mesh = jax.make_mesh((1,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> hs, h = sequence_parallel_linear_recurrence(jnp.full((8, 2), 0.5), jnp.ones((8, 2)), mesh=mesh)
        >>> hs.shape, float(h[0])
        ((8, 2), 1.9921875)
    """
    fn = "sequence_parallel_linear_recurrence"
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    n = sequence_shards(sequence_axis, mesh)
    if n == 1:
        return diagonal.linear_recurrence(
            a,
            b,
            h0,
            axis=axis,
            resets=resets,
            mask=mask,
            reverse=reverse,
            method=method,
            chunk_size=chunk_size,
        )
    if method not in diagonal.METHODS:
        raise ValueError(f"{fn}: unknown method {method!r}; choose one of {', '.join(diagonal.METHODS)}.")
    if chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be >= 1, got {chunk_size}.")
    a, b = jnp.asarray(a), jnp.asarray(b)
    if not 0 <= axis < b.ndim:
        raise ValueError(f"{fn}: axis={axis} is out of range for `b` of shape {b.shape}.")
    dtype = jnp.result_type(a, b)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"{fn}: `a` and `b` must be floating or complex, got {dtype}.")
    a = jnp.broadcast_to(a, b.shape).astype(dtype)
    b = b.astype(dtype)
    flag_shape = b.shape[: axis + 1]
    resets = diagonal._check_flags("resets", resets, flag_shape)
    mask = diagonal._check_flags("mask", mask, flag_shape)
    as_state = lambda f: f.reshape(f.shape + (1,) * (b.ndim - f.ndim))
    if resets is not None:
        a = jnp.where(as_state(resets), jnp.zeros((), dtype), a)
    if mask is not None:
        a = jnp.where(as_state(mask), a, jnp.ones((), dtype))
        b = jnp.where(as_state(mask), b, jnp.zeros((), dtype))
    state_shape = b.shape[:axis] + b.shape[axis + 1 :]
    if h0 is None:
        h0 = jnp.zeros(state_shape, dtype)
    else:
        h0 = jnp.asarray(h0)
        if h0.shape != state_shape:
            raise ValueError(
                f"{fn}: h0 has shape {h0.shape}, expected {state_shape} (`b` without its time axis)."
            )
        h0 = h0.astype(dtype)
    length = b.shape[axis]
    local = -(-length // n)
    pad = local * n - length
    # Padding tokens (a = 1, b = 0) at the end leave every state unchanged, in either direction.
    a, b = _pad_time(a, axis, pad, 1), _pad_time(b, axis, pad)
    if method == "auto":
        method = diagonal.choose_method(local, int(b.size // max(b.shape[axis], 1)))
    plan = _Plan(mesh, sequence_axis, axis, bool(reverse), method, int(chunk_size))
    hs, final = _diag(plan, a, b, h0)
    if pad:
        hs = lax.slice_in_dim(hs, 0, length, axis=axis)
    return hs, final


# --------------------------------------------------------------------------------------------------
# Matrix-state recurrence (linear attention, GLA)
# --------------------------------------------------------------------------------------------------
def _shard_segments(
    resets: jax.Array | None, mask: jax.Array | None, lead: tuple[int, ...], time_axis: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A shard's token flags ([*batch, T], time on `time_axis`): `keep`, the tokens whose decay reaches
    the shard's final state (neither padding nor a reset: a reset's own decay acts on the cleared state);
    `valid`, the tokens written into it (not padding, on or after the shard's last reset); `any_reset`
    [*batch]. A reset on a padded token does not count: padding wins."""
    keep = jnp.ones(lead, bool) if mask is None else mask
    valid = keep
    any_reset = jnp.zeros(lead[:-1], bool)
    if resets is not None:
        live = resets if mask is None else resets & mask
        seg = jnp.cumsum(live.astype(jnp.int32), axis=time_axis)
        last_seg = lax.index_in_dim(seg, -1, axis=time_axis)
        valid = valid & (seg == last_seg)
        keep = keep & ~live
        any_reset = lax.squeeze(last_seg, (time_axis,)) > 0
    return keep, valid, any_reset


def _matrix_summary(k, v, log_gamma, resets, mask, time_axis, acc):
    """A shard's (total decay, final state from a zero state), without running the engine.

    The state is one contraction, Σ_j w_j k_j v_jᵀ per head, with w_j = exp(Σ_{s>j} log γ_s) the decay
    from token j to the shard's end, 0 before the shard's last reset and at padding. The total decay is
    exp(Σ log γ), 0 if the shard has a reset. Shapes [*batch, H, d_k, d_v] and [*batch, H] (or [*batch,
    H, d_k] for a decay per key channel).
    """
    t = time_axis
    lead = v.shape[: t + 1]
    keep, valid, any_reset = _shard_segments(resets, mask, lead, t)
    heads, groups = v.shape[-2], k.shape[-2]
    if log_gamma is None:
        w = jnp.broadcast_to(valid.astype(acc)[..., None], (*lead, heads))
        total = jnp.ones((*lead[:-1], heads), acc)
    else:
        lg = log_gamma.astype(acc)
        flags = lambda f: f.reshape(f.shape + (1,) * (lg.ndim - f.ndim))
        kept = jnp.where(flags(keep), lg, jnp.zeros((), acc))
        # Σ_{s>j} log γ_s ≤ 0 everywhere (log γ ≤ 0), so exp cannot overflow where w is masked out. It is
        # summed from its own tokens, not taken as end − cum_j: that difference loses the small decays
        # to rounding once |end| is large, and at the last token (and before trailing padding) it sends
        # exp(0)'s O(1) gradient into log γ twice with opposite signs, which float32 resolves to ~1e-7 of
        # it, more than the true d/d log γ of a strong decay (`matrix_recurrence.sum_after`;
        # tests/test_sequence_parallel.py::test_summaries_gradients_at_extreme_decays).
        w = jnp.where(flags(valid), jnp.exp(sum_after(kept, axis=t)), jnp.zeros((), acc))
        total = jnp.exp(jnp.sum(kept, axis=t))
    total = jnp.where(any_reset.reshape(any_reset.shape + (1,) * (total.ndim - any_reset.ndim)), 0.0, total)
    cd = k.dtype
    if w.ndim == k.ndim:  # a decay per key channel
        k_h = (jnp.repeat(k, heads // groups, axis=-2).astype(acc) * w).astype(cd)
        return total, jnp.einsum("...thk,...thv->...hkv", k_h, v, preferred_element_type=acc)
    vw = (v.astype(acc) * w[..., None]).astype(cd)
    vw = vw.reshape(*vw.shape[:-2], groups, heads // groups, v.shape[-1])
    s = jnp.einsum("...tgk,...tgrv->...grkv", k, vw, preferred_element_type=acc)
    return total, s.reshape(*s.shape[:-4], heads, *s.shape[-2:])


def sequence_parallel_linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_gamma: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: str = "auto",
    chunk_size: int = 64,
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`seqjax.scan.linear_attention` with the time axis split over the mesh axis `sequence_axis`.

    Same arguments and results as `linear_attention` (q, k [*batch, T, G, d_k], v [*batch, T, H, d_v],
    log_gamma [*batch, T, H] (or [*batch, T, H, d_k], a decay per key channel, where the engine takes
    it), s0 [*batch, H, d_k, d_v], resets, mask, method, chunk_size), plus `sequence_axis` and `mesh`.
    Each shard contracts its tokens into its final state from zero (Σ_j exp(Σ_{s>j} log γ_s) k_j v_jᵀ)
    and its total decay; these are all-gathered and folded into the state entering each shard, S_in,
    and each shard runs the engine from S_in. Gradients: autodiff (the engine's own backward pass inside
    every shard).
    """
    fn = "sequence_parallel_linear_attention"
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    n = sequence_shards(sequence_axis, mesh)
    if n == 1:
        return linear_attention(
            q, k, v, log_gamma, s0, resets=resets, mask=mask, method=method, chunk_size=chunk_size
        )
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if q.ndim < 3 or v.ndim != q.ndim:
        raise ValueError(
            f"{fn}: q has shape {q.shape} and v {v.shape}; expected q, k [*batch, T, G, d_k] and v "
            f"[*batch, T, H, d_v]."
        )
    t_axis = q.ndim - 3
    batch, length = q.shape[:t_axis], q.shape[t_axis]
    heads, dk, dv = v.shape[-2], q.shape[-1], v.shape[-1]
    acc = accumulation_dtype(jnp.result_type(q, k, v))
    s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else jnp.asarray(s0).astype(acc)
    if s0.shape != (*batch, heads, dk, dv):
        raise ValueError(f"{fn}: `s0` has shape {s0.shape}, expected {(*batch, heads, dk, dv)}.")
    arrays = {"q": q, "k": k, "v": v, "log_gamma": log_gamma, "resets": resets, "mask": mask}
    arrays, _ = _pad_to_shards(arrays, t_axis, length, n)

    def body(s0, q, k, v, log_gamma=None, resets=None, mask=None):
        total, s_local = _matrix_summary(k, v, log_gamma, resets, mask, t_axis, acc)
        per_channel = total.ndim == s_local.ndim - 1  # [*batch, H, d_k]
        expand = (lambda d: d[..., None]) if per_channel else (lambda d: d[..., None, None])
        s_in, final = _fold_shards(_linear_step(expand), s0, (total, s_local), sequence_axis)
        ys, _ = linear_attention(
            q, k, v, log_gamma, s_in, resets=resets, mask=mask, method=method, chunk_size=chunk_size
        )
        return ys, final

    return _run_shards(
        body, s0, arrays, time_axis=t_axis, length=length, sequence_axis=sequence_axis, mesh=mesh
    )


# --------------------------------------------------------------------------------------------------
# Delta rules (DeltaNet, Gated DeltaNet; RWKV-7's generalised delta rule): affine summaries
# --------------------------------------------------------------------------------------------------
def _sequence_parallel_affine(
    fn: str,
    run: Any,
    arrays: dict[str, jax.Array | None],
    s0: jax.Array | None,
    *,
    query: str,
    value: str,
    sequence_axis: str,
    mesh: Mesh,
) -> tuple[jax.Array, jax.Array]:
    """An engine whose state moves as S_t = A_t S_{t−1} + (input), with A_t [d_k, d_k] independent of S
    and of the values, split over `sequence_axis`; `run(**arrays, s0=state)` -> (ys, final state), with
    `arrays[query]` [*batch, T, H, d_k] and `arrays[value]` [*batch, T, H, d_v].

    A shard's final state is P S_in + Q: Q is the engine's final state from zero, and P (the product of
    the shard's transitions, resets and padding included) is the engine's final state from the identity
    with zero values. The n summaries are all-gathered and folded into the state entering each shard,
    and each shard runs the engine from it: three engine passes per shard, the second on d_k-wide
    values.
    """
    arrays = {**arrays, query: jnp.asarray(arrays[query]), value: jnp.asarray(arrays[value])}
    xq, xv = arrays[query], arrays[value]
    if xq.ndim < 3 or xv.ndim != xq.ndim:
        raise ValueError(
            f"{fn}: {query} has shape {xq.shape} and {value} {xv.shape}; expected {query} [*batch, T, H, "
            f"d_k] and {value} [*batch, T, H, d_v]."
        )
    t_axis = xq.ndim - 3
    length = xq.shape[t_axis]
    acc = accumulation_dtype(jnp.result_type(xq, arrays["k"], xv))  # as the engines
    shape = (*xq.shape[:t_axis], xv.shape[-2], xq.shape[-1], xv.shape[-1])
    s0 = jnp.zeros(shape, acc) if s0 is None else jnp.asarray(s0).astype(acc)
    if s0.shape != shape:
        raise ValueError(f"{fn}: `s0` has shape {s0.shape}, expected {shape}.")
    engine = lambda state, **x: run(**x, s0=state)
    n = sequence_shards(sequence_axis, mesh)
    batch = s0.shape[:-3]
    heads, dk = s0.shape[-3], s0.shape[-2]
    arrays, _ = _pad_to_shards(arrays, t_axis, length, n)

    def body(s0, **x):
        _, last = engine(jnp.zeros_like(s0), **x)
        eye = jnp.broadcast_to(jnp.eye(dk, dtype=s0.dtype), (*batch, heads, dk, dk))
        values = x[value]
        _, transition = engine(eye, **{**x, value: jnp.zeros((*values.shape[:-1], dk), values.dtype)})
        # S ← P_j S + Q_j, P_j acting on the key axis of S [*batch, H, d_k, d_v].
        s_in, final = _fold_shards(
            lambda s, pq: jnp.einsum("...ij,...jv->...iv", pq[0], s) + pq[1],
            s0,
            (transition, last),
            sequence_axis,
        )
        ys, _ = engine(s_in, **x)
        return ys, final

    return _run_shards(
        body, s0, arrays, time_axis=t_axis, length=length, sequence_axis=sequence_axis, mesh=mesh
    )


def sequence_parallel_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    log_alpha: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: str = "auto",
    chunk_size: int = delta_rule_lib.DEFAULT_CHUNK,
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`seqjax.scan.delta_rule` (DeltaNet, Gated DeltaNet) with the time axis split over the mesh axis
    `sequence_axis`.

    Same arguments and results as `delta_rule` (q, k [*batch, T, H, d_k], v [*batch, T, H, d_v], beta,
    log_alpha [*batch, T, H], s0 [*batch, H, d_k, d_v], resets, mask, method, chunk_size), plus
    `sequence_axis` and `mesh`. The delta rule's transition α_t (I − β_t k_t k_tᵀ) is a d_k × d_k matrix
    that does not depend on the state, so a shard's final state is P S_in + Q: each shard runs the
    engine from zero (Q) and from the identity with zero values (P), the summaries are all-gathered and
    folded, and each shard runs the engine from the state entering it. Gradients: autodiff (the
    engine's own backward pass inside every shard).

        >>> import jax, jax.numpy as jnp
        >>> mesh = jax.make_mesh((1,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> q = k = jnp.ones((6, 1, 2)) / 2.0
        >>> ys, s = sequence_parallel_delta_rule(q, k, jnp.ones((6, 1, 3)), jnp.ones((6, 1)), mesh=mesh)
        >>> ys.shape, s.shape
        ((6, 1, 3), (1, 2, 3))
    """
    fn = "sequence_parallel_delta_rule"
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    run = functools.partial(delta_rule_lib.delta_rule, method=method, chunk_size=chunk_size)
    arrays = {"q": q, "k": k, "v": v, "beta": beta, "log_alpha": log_alpha, "resets": resets, "mask": mask}
    if sequence_shards(sequence_axis, mesh) == 1:
        return run(**arrays, s0=s0)
    return _sequence_parallel_affine(
        fn, run, arrays, s0, query="q", value="v", sequence_axis=sequence_axis, mesh=mesh
    )


def sequence_parallel_generalized_delta_rule(
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    a: jax.Array,
    b: jax.Array,
    log_w: jax.Array,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: str = "auto",
    chunk_size: int = generalized_delta_rule_lib.DEFAULT_CHUNK,
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`seqjax.scan.generalized_delta_rule` (RWKV-7) with the time axis split over the mesh axis
    `sequence_axis`: as `sequence_parallel_delta_rule`, the transition diag(w_t) + b_t a_tᵀ being a
    d_k × d_k matrix independent of the state. Same arguments and results as `generalized_delta_rule`,
    plus `sequence_axis` and `mesh`.

        >>> import jax, jax.numpy as jnp
        >>> mesh = jax.make_mesh((1,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> x = jnp.ones((6, 1, 2)) / 2.0
        >>> ys, s = sequence_parallel_generalized_delta_rule(x, x, jnp.ones((6, 1, 3)), -x, x, -x, mesh=mesh)
        >>> ys.shape, s.shape
        ((6, 1, 3), (1, 2, 3))
    """
    fn = "sequence_parallel_generalized_delta_rule"
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    run = functools.partial(
        generalized_delta_rule_lib.generalized_delta_rule, method=method, chunk_size=chunk_size
    )
    arrays = {"r": r, "k": k, "v": v, "a": a, "b": b, "log_w": log_w, "resets": resets, "mask": mask}
    if sequence_shards(sequence_axis, mesh) == 1:
        return run(**arrays, s0=s0)
    return _sequence_parallel_affine(
        fn, run, arrays, s0, query="r", value="v", sequence_axis=sequence_axis, mesh=mesh
    )


# --------------------------------------------------------------------------------------------------
# Selective scan (Mamba)
# --------------------------------------------------------------------------------------------------
def sequence_parallel_selective_scan(
    x: jax.Array,
    dt: jax.Array,
    a_mat: jax.Array,
    b: jax.Array,
    c: jax.Array,
    h0: jax.Array | None = None,
    resets: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    method: str = "auto",
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`seqjax.scan.selective_scan` with the time axis (axis 1 of x, dt [B, L, D] and b, c [B, L, N])
    split over the mesh axis `sequence_axis`.

    Each shard runs the selective scan from zero for its last state (the summary pass), the shards'
    (exp(A Σ Δ) or 0 after a reset, last state) pairs are all-gathered and folded from h0, and each
    shard reruns the selective scan from its incoming state. Padding is Δ = 0, as for `selective_scan`.
    Mamba's causal convolution runs before the scan; its halo is `sequence_halo`. Gradients: autodiff
    through both passes (each rematerialised chunk by chunk, as in `selective_scan`).
    """
    fn = "sequence_parallel_selective_scan"
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    n = sequence_shards(sequence_axis, mesh)
    if n == 1:
        return selective_scan(x, dt, a_mat, b, c, h0, resets, chunk_size=chunk_size, method=method)
    bsz, length, d = x.shape
    f32 = accumulation_dtype(x.dtype)
    h0 = jnp.zeros((bsz, d, a_mat.shape[-1]), f32) if h0 is None else jnp.asarray(h0).astype(f32)
    pad = -(-length // n) * n - length
    # Δ = 0: padding tokens (the selective scan has no mask).
    arrays = {"x": x, "dt": dt, "b": b, "c": c}
    arrays = {name: _pad_time(arr, 1, pad) for name, arr in arrays.items()}
    arrays["resets"] = _pad_time(resets, 1, pad, False)

    def body(replicated, x, dt, b, c, resets=None):
        a_mat, h0 = replicated
        scan = functools.partial(selective_scan, chunk_size=chunk_size, method=method)
        _, last = scan(x, dt, a_mat, b, c, None, resets)
        decay = jnp.exp(jnp.sum(dt.astype(f32), axis=1)[..., None] * a_mat.astype(f32))  # [B, D, N]
        if resets is not None:
            decay = jnp.where(jnp.any(resets, axis=1)[:, None, None], jnp.zeros((), f32), decay)
        h_in, final = _fold_shards(_linear_step(lambda z: z), h0, (decay, last), sequence_axis)
        y, _ = scan(x, dt, a_mat, b, c, h_in, resets)
        return y, final

    return _run_shards(
        body, (a_mat, h0), arrays, time_axis=1, length=length, sequence_axis=sequence_axis, mesh=mesh
    )


# --------------------------------------------------------------------------------------------------
# mLSTM (xLSTM): the matrix memory under a max stabiliser
# --------------------------------------------------------------------------------------------------
def _mlstm_summary(k, v, igate, log_f, resets, mask, time_axis):
    """A shard's summary for the stabilised fold, from the neutral memory (nothing written, m = −∞),
    by one contraction (no engine pass): (F, M, C, any_reset).

    With S_j = Σ_{l>j} log f_l (summed from its own tokens, `matrix_recurrence.sum_after`) and the
    tokens written since the shard's last reset (not padding): M = max_j (s_j + S_j), the stabiliser the
    recurrence reaches from m = −∞, where s_j = ĩ_j, and on the reset token max(ĩ_r, log f_r) (the
    recurrence restarts from m = 0 there, so m_r = max(log f_r + 0, ĩ_r)); −∞ if no token is written.
    C [*batch, H, d_k, d_v + 1] is Σ_j exp(ĩ_j + S_j − M) k̂_j [v_j; 1]ᵀ: the memory with n as its last
    column, stabilised by M (every weight ≤ 1). F [*batch, H] is Σ log f over the shard (0 at padding),
    which only matters without a reset: a reset cuts the carry (`any_reset` [*batch]).
    """
    t = time_axis
    _, valid, any_reset = _shard_segments(resets, mask, k.shape[: t + 1], t)
    ig, lf = jnp.moveaxis(igate, t, -1), jnp.moveaxis(log_f, t, -1)  # [*batch, H, T]
    b, comp = mlstm_lib.compensated_cumsum(lf)
    # S_j summed from its own tokens, not (b_L − b_j) + (comp_L − comp_j): at the last token (and before
    # trailing padding) that difference sends an O(1) gradient into log f twice with opposite signs
    # (`matrix_recurrence.sum_after`).
    after = sum_after(lf)  # S_j
    flags = lambda f: jnp.expand_dims(f, -2)  # [*batch, T] -> [*batch, 1, T]
    source = ig
    if resets is not None:
        source = jnp.where(flags(resets & valid), jnp.maximum(ig, lf), ig)
    m_local = jnp.max(jnp.where(flags(valid), source + after, -jnp.inf), axis=-1)
    # Finite anchors and exponents ≤ 0 only, in either branch of each `where`: no NaN, value or gradient.
    anchor = jnp.where(jnp.any(valid, axis=-1)[..., None], m_local, 0.0)
    log_w = jnp.where(flags(valid), ig + after - anchor[..., None], 0.0)
    weights = jnp.where(flags(valid), jnp.exp(log_w), 0.0)
    k_w = k * k.shape[-1] ** -0.5 * jnp.moveaxis(weights, -1, t)[..., None]
    v_aug = jnp.concatenate([v, jnp.ones((*v.shape[:-1], 1), v.dtype)], axis=-1)
    c_local = jnp.einsum("...thk,...thv->...hkv", k_w, v_aug)
    return b[..., -1] + comp[..., -1], m_local, c_local, any_reset


def _mlstm_combine(state, summary):
    """The stabilised fold's step: the memory (C with n as its last column, m) after a shard with summary
    (F, M, C_local, any_reset) from the memory before it. In the unstabilised memory C̃ = e^m C the shard
    maps C̃ to e^F C̃ + e^M C_local (C̃ dropped after a reset) and m to max(F + m, M) (M after a reset), so

        m' = max(F + m, M) ;  C' = exp(F + m − m') C + exp(M − m') C_local       both factors ≤ 1
    """
    c, m = state
    f_sum, m_local, c_local, reset = summary
    reset = reset[..., None]  # [*batch, 1]: every head
    carried = f_sum + m
    m_new = jnp.where(reset, m_local, jnp.maximum(carried, m_local))
    decay = jnp.where(reset, 0.0, jnp.exp(jnp.where(reset, 0.0, carried - m_new)))
    scale = jnp.exp(m_local - m_new)  # 0 for a shard with nothing written (M = −∞)
    return decay[..., None, None] * c + scale[..., None, None] * c_local, m_new


def sequence_parallel_mlstm(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    igate: jax.Array,
    fgate: jax.Array,
    memory: mlstm_lib.MLSTMMemory | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: str = "auto",
    chunk_size: int = mlstm_lib.DEFAULT_CHUNK,
    eps: float = mlstm_lib.EPS,
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
) -> tuple[jax.Array, mlstm_lib.MLSTMMemory]:
    """`seqjax.scan.mlstm` (xLSTM's mLSTM) with the time axis split over the mesh axis `sequence_axis`.

    Same arguments and results as `mlstm` (q, k [*batch, T, H, d_k], v [*batch, T, H, d_v], igate,
    fgate [*batch, T, H] pre-activations, memory `MLSTMMemory`, resets, mask, method, chunk_size, eps),
    plus `sequence_axis` and `mesh`. The unstabilised memory C̃ = e^m C is linear (C̃_t = f_t C̃_{t−1} +
    e^{ĩ_t} k̂_t v_tᵀ) and the stabiliser a max-plus recurrence (m_t = max(log f_t + m_{t−1}, ĩ_t)), so a
    shard acts on the memory through (F, M, C_local): its summed log forget gates, and its stabiliser
    and stabilised memory from the neutral memory (m = −∞), one contraction per shard. The summaries are
    all-gathered and folded, m ← max(F + m, M), C ← exp(F + m − m') C + exp(M − m') C_local (n as C's
    last column; a reset drops the carry), from the initial memory; each shard runs the engine from the
    memory entering it. The m entering every shard is the recurrence's (the initial m, or 0 after a
    reset, and every ĩ, decayed), so values, stabiliser and the eps term equal the single-device
    engine's up to rounding. Gradients: autodiff (through the maxima, as the engine's).

        >>> import jax, jax.numpy as jnp
        >>> mesh = jax.make_mesh((1,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
        >>> q = k = jnp.ones((6, 1, 2)); gates = jnp.zeros((6, 1))
        >>> hs, memory = sequence_parallel_mlstm(q, k, jnp.ones((6, 1, 3)), gates, gates, mesh=mesh)
        >>> hs.shape, memory.c.shape
        ((6, 1, 3), (1, 2, 3))
    """
    fn = "sequence_parallel_mlstm"
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    n = sequence_shards(sequence_axis, mesh)
    engine = functools.partial(mlstm_lib.mlstm, method=method, chunk_size=chunk_size, eps=eps)
    if n == 1:
        return engine(q, k, v, igate, fgate, memory, resets=resets, mask=mask)
    if method not in mlstm_lib.METHODS:
        raise ValueError(f"{fn}: unknown method {method!r}; choose one of {', '.join(mlstm_lib.METHODS)}.")
    q, k, v, igate, fgate, memory, resets, mask = mlstm_lib._prepare(
        fn, q, k, v, igate, fgate, memory, resets, mask
    )
    t_axis = q.ndim - 3
    length = q.shape[t_axis]
    if length == 0:
        return engine(q, k, v, igate, fgate, memory, resets=resets, mask=mask)
    arrays = {"q": q, "k": k, "v": v, "igate": igate, "fgate": fgate, "resets": resets, "mask": mask}
    arrays, _ = _pad_to_shards(arrays, t_axis, length, n)
    as_memory = lambda c, m: mlstm_lib.MLSTMMemory(c[..., :-1], c[..., -1], m)

    def body(memory, q, k, v, igate, fgate, resets=None, mask=None):
        log_f = jax.nn.log_sigmoid(fgate)
        if mask is not None:
            log_f = jnp.where(mask[..., None], log_f, jnp.zeros((), log_f.dtype))  # padding: log f = 0
        summary = _mlstm_summary(k, v, igate, log_f, resets, mask, t_axis)
        c0 = jnp.concatenate([memory.c, memory.n[..., None]], axis=-1)
        entering, final = _fold_shards(_mlstm_combine, (c0, memory.m), summary, sequence_axis)
        ys, _ = engine(q, k, v, igate, fgate, as_memory(*entering), resets=resets, mask=mask)
        return ys, as_memory(*final)

    return _run_shards(
        body, memory, arrays, time_axis=t_axis, length=length, sequence_axis=sequence_axis, mesh=mesh
    )


# --------------------------------------------------------------------------------------------------
# Halo exchange (causal convolutions, sliding windows)
# --------------------------------------------------------------------------------------------------
def sequence_halo(
    x: jax.Array, width: int, axis_name: str, *, time_axis: int = 0, initial: jax.Array | None = None
):
    """Inside `shard_map`: the last `width` tokens of the previous shard along `axis_name`, for the
    first shard `initial` (zeros if None); shape of `x` with `width` tokens on `time_axis`.

    A causal convolution of kernel size K over a sequence-sharded input needs K − 1 such tokens
    (Mamba's conv window); a sliding-window attention needs `window` of them. One `ppermute` of
    `width` tokens per shard. `width` must not exceed the shard's length.
    """
    size = x.shape[time_axis]
    if not 0 <= width <= size:
        raise ValueError(f"sequence_halo: width={width} must be in [0, {size}] (the shard's length).")
    n = lax.axis_size(axis_name)
    tail = lax.slice_in_dim(x, size - width, size, axis=time_axis)
    halo = lax.ppermute(tail, axis_name, [(i, i + 1) for i in range(n - 1)])
    if initial is None:
        return halo
    first = lax.axis_index(axis_name) == 0
    return jnp.where(first, initial.astype(x.dtype), halo)
