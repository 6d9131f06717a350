"""Diagonal linear state space cells: S4D, S5 and LRU.

All three are the recurrence h_t = Ā ⊙ h_{t−1} + B̄ x_t with a diagonal complex Ā, read out as a real
y_t = (2·)Re(C h_t) + D ⊙ x_t. `step` runs one token of it through `recur`; `apply` runs the whole
sequence through the linear recurrence engine (`seqjax.scan.linear_recurrence`, sequential, associative
or chunked scan, with its own O(inputs)-memory backward pass), and the two agree in values and gradients.

Shared conventions:
- The layer maps H → H features (`hidden_size` = H = input_size = output_size), as in the papers;
  `init(key, input_size)` refuses any other input_size.
- Complex parameters are stored as two real float32 arrays (`*_re`, `*_im`, or a log-parameterised
  real part), so every parameter is a real array for optimizers, sharding rules and checkpoints.
- The state is complex: `initial_state(batch_shape, dtype)` returns complex64 for float32 (and for
  bfloat16), complex128 for float64. A real state passed in is promoted to complex.
- Conjugate symmetry (S4D, S5): a real system with N real state dimensions has its eigenvalues in
  conjugate pairs, so only one mode of each pair is kept (N/2 complex numbers of state) and the output
  takes 2·Re(C h). LRU keeps N unpaired complex modes and takes Re(C h), as in its paper.
- `dtype` is the compute dtype of the input and output projections (bfloat16 allowed, float32
  accumulation); discretisation, the recurrence and the state are float32/complex64 (float64/complex128
  when `dtype=float64`). Outputs are in `dtype`.
- `reverse=True` runs right to left; `method` and `chunk_size` choose the engine's backend.
- `sequence_axis` (None by default) names a mesh axis that splits the time axis: `apply` then runs
  `seqjax.scan.sequence_parallel_linear_recurrence` under the mesh of `jax.set_mesh` (docs/scan.md,
  "Sequence parallelism"). Values and gradients equal the single-device ones up to rounding.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.cells.base import DType, Params, RecurrentCell, accumulation_dtype, check_sequence_axis
from seqjax.cells.registry import register
from seqjax.cells.ssm_init import S4D_INITS, block_hippo_n, log_uniform, s4d_modes
from seqjax.common.checks import check_positive_int
from seqjax.scan.diagonal import DEFAULT_CHUNK, METHODS, linear_recurrence
from seqjax.scan.sequence_parallel import sequence_parallel_linear_recurrence
from seqjax.scan.sequential import reverse_resets

__all__ = ["DISCRETIZATIONS", "LRU", "S4D", "S5", "complex_dtype"]

DISCRETIZATIONS: tuple[str, ...] = ("zoh", "bilinear")
#: S5's `clip_eigs` bound on Re Λ: keeps every mode strictly stable (Smith et al. 2023, after Goel et al.).
MAX_REAL_EIG = -1e-4

Projected = tuple[jax.Array, jax.Array]  # (B̄ x [..., *state] complex, D ⊙ x [..., H] real)


def complex_dtype(dtype: DType) -> jnp.dtype:
    """The complex dtype of `dtype`'s precision: complex64 for float32 and bfloat16, complex128 for f64."""
    return jnp.promote_types(dtype, jnp.complex64)


def _zero_padding(ys: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return ys
    return jnp.where(mask[..., None], ys, jnp.zeros((), ys.dtype))


@dataclasses.dataclass(frozen=True)
class _DiagonalSSM(RecurrentCell):
    """What S4D, S5 and LRU share: complex diagonal state, `recur` for `step`, the linear engine for `apply`.

    Subclasses define `_state_shape`, `decay(params)` (Ā), `project_inputs` (returning (B̄ x, D ⊙ x)) and
    `_readout(params, h, skip)`.
    """

    # -- validation ----------------------------------------------------------------------------------
    def _check_common(self) -> None:
        label = type(self).__name__
        check_positive_int(label, "hidden_size", self.hidden_size)
        check_positive_int(label, "state_size", self.state_size)
        if self.method not in METHODS:
            raise ValueError(
                f"{label}: unknown method {self.method!r}; choose one of {', '.join(METHODS)} (the backend "
                f"of seqjax.scan.linear_recurrence)."
            )
        if int(self.chunk_size) < 1:
            raise ValueError(f"{label}: chunk_size must be >= 1, got {self.chunk_size}.")
        check_sequence_axis(label, self.sequence_axis)

    def _check_even_state(self) -> None:
        if int(self.state_size) % 2:
            raise ValueError(
                f"{type(self).__name__}: state_size={self.state_size} is odd, but the modes come in complex "
                f"conjugate pairs (state_size real dimensions = state_size/2 complex modes); use an even "
                f"state_size such as {self.state_size + 1}."
            )

    def _check_dt_range(self) -> None:
        if not 0 < self.dt_min < self.dt_max:
            raise ValueError(
                f"{type(self).__name__}: need 0 < dt_min < dt_max for the log-uniform Δ initialisation, got "
                f"dt_min={self.dt_min}, dt_max={self.dt_max}."
            )

    def _check_input_size(self, input_size: int) -> None:
        if int(input_size) != self.hidden_size:
            raise ValueError(
                f"{type(self).__name__}: the layer maps hidden_size={self.hidden_size} features to "
                f"hidden_size features, but init got input_size={input_size}. Build the cell with "
                f"hidden_size={input_size}, or project the inputs to {self.hidden_size} features first."
            )

    # -- shared interface ------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def _state_shape(self) -> tuple[int, ...]:
        """The state's shape without batch axes: [H, N/2] for S4D, [N/2] for S5, [N] for LRU."""

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    @property
    def _cdtype(self) -> jnp.dtype:
        return complex_dtype(self._acc)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> jax.Array:
        """Zeros [*batch_shape, *state_shape] in `complex_dtype(dtype)` (complex64 for float32)."""
        return jnp.zeros((*batch_shape, *self._state_shape), complex_dtype(dtype))

    def input_size_of(self, params: Params) -> int:
        return params["d"].shape[0]

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def _features(self, x: jax.Array) -> jax.Array:
        """x in the accumulation dtype, rounded through `dtype` first so bf16 compute sees bf16 inputs."""
        return x.astype(self.dtype).astype(self._acc)

    def _complex(self, re: jax.Array, im: jax.Array) -> jax.Array:
        return lax.complex(re.astype(self._acc), im.astype(self._acc))

    @abc.abstractmethod
    def decay(self, params: Params) -> jax.Array:
        """Ā, the per-token complex decay of every mode, shape `state_shape`."""

    @abc.abstractmethod
    def _readout(self, params: Params, h: jax.Array, skip: jax.Array) -> jax.Array:
        """y [..., H] in `dtype` from the (complex) state h and the skip term D ⊙ x."""

    def _recurrence(self, *args: Any, **kwargs: Any) -> tuple[jax.Array, jax.Array]:
        """`linear_recurrence`, or its sequence-parallel form over the mesh axis `sequence_axis`."""
        if self.sequence_axis is None:
            return linear_recurrence(*args, **kwargs)
        return sequence_parallel_linear_recurrence(*args, sequence_axis=self.sequence_axis, **kwargs)

    def recur(self, params: Params, state: jax.Array, projected: Projected) -> tuple[jax.Array, jax.Array]:
        bu, skip = projected
        h = self.decay(params) * state.astype(self._cdtype) + bu
        return h.astype(complex_dtype(state.dtype)), self._readout(params, h, skip)

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: jax.Array | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """`xs` [*batch, T, H] -> (`ys` [*batch, T, H], state after the last valid token)."""
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        bu, skip = self.project_inputs(params, xs)
        hs, final = self._recurrence(
            self.decay(params),
            bu,
            state,
            axis=xs.ndim - 2,
            resets=resets,
            mask=mask,
            reverse=self.is_reversed,
            method=self.method,
            chunk_size=self.chunk_size,
        )
        ys = self._readout(params, hs, skip)
        return _zero_padding(ys, mask), final.astype(complex_dtype(state.dtype))


# ==================================================================================================
# S4D
# ==================================================================================================
@register("s4d")
@dataclasses.dataclass(frozen=True)
class S4D(_DiagonalSSM):
    """S4D (Gu et al. 2022, "On the parameterization and initialization of diagonal state space models").

    H independent single-input single-output SSMs, one per feature, each a real system of N =
    `state_size` dimensions kept as N/2 complex modes (one of each conjugate pair):

        Ā = exp(Δ A),   B̄ = (exp(Δ A) − 1) / A · B             (zero-order hold)
        h_t = Ā ⊙ h_{t−1} + B̄ x_t                              h: [*batch, H, N/2] complex
        y_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ x_t                    (the conjugate pair adds the conjugate)

    with a learned Δ per feature. Parameters (all float32; [H, N/2] unless noted):
      log_dt [H]           log Δ, initialised log-uniform in [dt_min, dt_max].
      a_re_log, a_im       A = −exp(a_re_log) + i·a_im; storing −Re A through a log keeps Re A < 0,
                           so every mode stays stable whatever the optimizer does.
      b_re, b_im           B (learned, as in S4's diagonal kernel).
      c_re, c_im           C, complex standard normal (each part N(0, ½)).
      d [H]                the skip connection D, standard normal.

    Initialisation `a_init` (named so because `init` is the method that builds the parameters):
      "lin"   S4D-Lin:  A_n = −½ + iπn, B = 1.
      "inv"   S4D-Inv:  A_n = −½ + i (N/π)(N/(2n+1) − 1), B = 1.
      "legs"  S4D-LegS: the eigenvalues of the normal part of HiPPO-LegS (Im > 0 half), B = HiPPO's B in
              that eigenbasis.

    `param_groups()`: log_dt, A and B are "ssm" (S4's optimizer trains them at their own learning rate
    without weight decay); C and D are "default".

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.S4D(hidden_size=3, state_size=4)         # maps 3 features to 3
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, state.shape, state.dtype                     # N/2 complex modes per feature
    ((2, 5, 3), (2, 3, 2), dtype('complex64'))
    """

    hidden_size: int
    state_size: int = 64
    a_init: str = "lin"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    reverse: bool = False
    method: str = "auto"
    chunk_size: int = DEFAULT_CHUNK
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        self._check_common()
        self._check_even_state()
        self._check_dt_range()
        if self.a_init not in S4D_INITS:
            raise ValueError(f"S4D: unknown a_init {self.a_init!r}; choose one of {', '.join(S4D_INITS)}.")

    @property
    def _state_shape(self) -> tuple[int, ...]:
        return (self.hidden_size, self.state_size // 2)

    def init(self, key: jax.Array, input_size: int) -> Params:
        self._check_input_size(input_size)
        h, m, pd = self.hidden_size, self.state_size // 2, self.param_dtype
        a, b = s4d_modes(self.a_init, self.state_size)
        k_dt, k_cre, k_cim, k_d = jax.random.split(key, 4)
        per_feature = lambda v: jnp.broadcast_to(jnp.asarray(v, pd), (h, m))
        return {
            "log_dt": log_uniform(k_dt, (h,), self.dt_min, self.dt_max, pd),
            "a_re_log": per_feature(jnp.log(-a.real)),
            "a_im": per_feature(a.imag),
            "b_re": per_feature(b.real),
            "b_im": per_feature(b.imag),
            "c_re": jax.random.normal(k_cre, (h, m), pd) * math.sqrt(0.5),
            "c_im": jax.random.normal(k_cim, (h, m), pd) * math.sqrt(0.5),
            "d": jax.random.normal(k_d, (h,), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        modes = ("embed", "ssm_state")
        axes = {k: modes for k in ("a_re_log", "a_im", "b_re", "b_im", "c_re", "c_im")}
        return {"log_dt": ("embed",), **axes, "d": ("embed",)}

    def param_groups(self) -> dict[str, str]:
        ssm = {"log_dt", "a_re_log", "a_im", "b_re", "b_im"}
        return {k: "ssm" if k in ssm else "default" for k in self.param_axes()}

    def eigenvalues(self, params: Params) -> jax.Array:
        """The continuous-time A [H, N/2] (complex)."""
        return self._complex(-jnp.exp(params["a_re_log"]), params["a_im"])

    def _discretize(self, params: Params) -> tuple[jax.Array, jax.Array]:
        a = self.eigenvalues(params)
        dt_a = jnp.exp(params["log_dt"].astype(self._acc))[:, None] * a
        a_bar = jnp.exp(dt_a)
        return a_bar, (a_bar - 1) / a * self._complex(params["b_re"], params["b_im"])

    def decay(self, params: Params) -> jax.Array:
        return self._discretize(params)[0]

    def project_inputs(self, params: Params, x: jax.Array) -> Projected:
        u = self._features(x)
        _, b_bar = self._discretize(params)
        return b_bar * u[..., None], params["d"].astype(self._acc) * u

    def _readout(self, params: Params, h: jax.Array, skip: jax.Array) -> jax.Array:
        c_re, c_im = params["c_re"].astype(self._acc), params["c_im"].astype(self._acc)
        y = 2 * jnp.sum(c_re * h.real - c_im * h.imag, axis=-1) + skip
        return y.astype(self.dtype)


# ==================================================================================================
# S5
# ==================================================================================================
@register("s5")
@dataclasses.dataclass(frozen=True)
class S5(_DiagonalSSM):
    """S5 (Smith, Warrington & Linderman 2023, "Simplified state space layers for sequence modeling").

    One multi-input multi-output SSM over all H features, diagonalised: a real system of P =
    `state_size` dimensions kept as P/2 complex modes Λ (conjugate symmetry), B̃ = V⁻¹B, C̃ = C V:

        h_t = Λ̄ ⊙ h_{t−1} + B̄ x_t                      h: [*batch, P/2] complex
        y_t = 2·Re(C̃ h_t) + D ⊙ x_t

    with a learned Δ per mode and `discretization`:
        "zoh"       Λ̄ = exp(ΔΛ),                  B̄ = (Λ̄ − 1)/Λ · B̃
        "bilinear"  Λ̄ = (1 + ΔΛ/2)/(1 − ΔΛ/2),    B̄ = Δ/(1 − ΔΛ/2) · B̃

    Initialisation: Λ and V from the normal part of HiPPO-LegS ("HiPPO-N"), block-diagonal with
    `blocks` blocks of P/blocks dimensions (which must be even, one conjugate pair per kept mode);
    B ~ LeCun-normal [P, H] with fan-in P (the reference's `lecun_normal()` axes) then B̃ = V⁻¹B;
    C ~ complex LeCun-normal [H, P] then C̃ = C V; D ~ N(0, 1); log Δ log-uniform in [dt_min, dt_max].
    `clip_eigs=True` uses min(Re Λ, −1e-4) so every mode stays stable
    (recommended for long or unbounded sequences).

    Parameters (float32; stored input-major like `w_ih`, i.e. transposed relative to the paper):
      lambda_re, lambda_im [P/2]      Λ.
      log_dt [P/2]                    log Δ.
      b_re, b_im [H, P/2]             B̃ᵀ.
      c_re, c_im [P/2, H]             C̃ᵀ.
      c_bwd_re, c_bwd_im [P/2, H]     the backward pass's C̃ᵀ (only with `bidirectional=True`).
      d [H]                           D.

    `bidirectional=True` (S5's bidirectional layer): the same Λ̄, B̄ are scanned in both directions and
    y_t = 2·Re(C̃ h_t^→) + 2·Re(C̃_bwd h_t^←) + D ⊙ x_t. The state is then a dict {"forward", "backward"}
    (the backward one is the state after token 0), and there is no `step` (it needs future tokens).

    `param_groups()`: Λ, log Δ and B̃ are "ssm" (S5's standard optimizer: own learning rate, no weight
    decay); C̃ and D are "default".

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.S5(hidden_size=3, state_size=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, state.shape                                  # P/2 complex modes
    ((2, 5, 3), (2, 2))
    >>> cells.S5(hidden_size=3, state_size=4, bidirectional=True).step_unsupported()
    'S5 with bidirectional=True has no step form (it reads future tokens)'
    """

    hidden_size: int
    state_size: int = 64
    blocks: int = 1
    discretization: str = "zoh"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    clip_eigs: bool = False
    bidirectional: bool = False
    reverse: bool = False
    method: str = "auto"
    chunk_size: int = DEFAULT_CHUNK
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        self._check_common()
        self._check_even_state()
        self._check_dt_range()
        p, blocks = int(self.state_size), int(self.blocks)
        if blocks < 1 or p % blocks:
            raise ValueError(
                f"S5: blocks={self.blocks} must be a positive divisor of state_size={p} (the state matrix "
                f"is initialised block-diagonal with state_size/blocks dimensions per block)."
            )
        if (p // blocks) % 2:
            raise ValueError(
                f"S5: state_size={p} with blocks={blocks} gives blocks of {p // blocks} dimensions; each "
                f"block must be even for conjugate symmetry. Choose blocks dividing state_size/2 = {p // 2}."
            )
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"S5: unknown discretization {self.discretization!r}; choose one of "
                f"{', '.join(DISCRETIZATIONS)}."
            )
        if self.bidirectional and self.reverse:
            raise ValueError(
                "S5: bidirectional=True already runs both directions; leave reverse=False (reverse=True is "
                "for a single right-to-left pass)."
            )

    @property
    def _state_shape(self) -> tuple[int, ...]:
        return (self.state_size // 2,)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> Any:
        """Zeros [*batch_shape, P/2] complex; a dict {"forward", "backward"} of them when bidirectional."""
        zeros = super().initial_state(batch_shape, dtype)
        return {"forward": zeros, "backward": zeros} if self.bidirectional else zeros

    def init(self, key: jax.Array, input_size: int) -> Params:
        self._check_input_size(input_size)
        h, p, pd = self.hidden_size, self.state_size, self.param_dtype
        lam, v, v_inv = block_hippo_n(p, self.blocks)
        k_b, k_c, k_cb, k_d, k_dt = jax.random.split(key, 5)
        # LeCun-normal on shape (P, H) with the reference's axes (lindermanlab/S5 `init_VinvB` calls
        # `lecun_normal()` on (P, H): fan-in P, not the H inputs B maps); C on (H, P): fan-in P.
        b = jax.nn.initializers.lecun_normal()(k_b, (p, h), jnp.float32)
        b_tilde = jnp.asarray(v_inv, jnp.complex64) @ b.astype(jnp.complex64)  # [P/2, H]

        def c_tilde(k: jax.Array) -> jax.Array:  # [P/2, H], i.e. (C V)ᵀ
            k_re, k_im = jax.random.split(k)
            lecun = jax.nn.initializers.lecun_normal(in_axis=1, out_axis=0)
            c = lax.complex(lecun(k_re, (h, p), jnp.float32), lecun(k_im, (h, p), jnp.float32))
            return (c @ jnp.asarray(v, jnp.complex64)).T

        c = c_tilde(k_c)
        params = {
            "lambda_re": jnp.asarray(lam.real, pd),
            "lambda_im": jnp.asarray(lam.imag, pd),
            "log_dt": log_uniform(k_dt, (p // 2,), self.dt_min, self.dt_max, pd),
            "b_re": b_tilde.T.real.astype(pd),
            "b_im": b_tilde.T.imag.astype(pd),
            "c_re": c.real.astype(pd),
            "c_im": c.imag.astype(pd),
        }
        if self.bidirectional:
            c_bwd = c_tilde(k_cb)
            params["c_bwd_re"], params["c_bwd_im"] = c_bwd.real.astype(pd), c_bwd.imag.astype(pd)
        params["d"] = jax.random.normal(k_d, (h,), pd)
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = {
            "lambda_re": ("ssm_state",),
            "lambda_im": ("ssm_state",),
            "log_dt": ("ssm_state",),
            "b_re": ("embed", "ssm_state"),
            "b_im": ("embed", "ssm_state"),
            "c_re": ("ssm_state", "embed"),
            "c_im": ("ssm_state", "embed"),
        }
        if self.bidirectional:
            axes["c_bwd_re"] = axes["c_bwd_im"] = ("ssm_state", "embed")
        axes["d"] = ("embed",)
        return axes

    def param_groups(self) -> dict[str, str]:
        ssm = {"lambda_re", "lambda_im", "log_dt", "b_re", "b_im"}
        return {k: "ssm" if k in ssm else "default" for k in self.param_axes()}

    def eigenvalues(self, params: Params) -> jax.Array:
        """The continuous-time Λ [P/2] (complex), after `clip_eigs`."""
        re = params["lambda_re"].astype(self._acc)
        if self.clip_eigs:
            re = jnp.minimum(re, MAX_REAL_EIG)
        return self._complex(re, params["lambda_im"])

    def _discretize(self, params: Params) -> tuple[jax.Array, jax.Array]:
        """(Λ̄, g) [P/2] with B̄ = diag(g) B̃, so the input matmul stays real and runs in `dtype`."""
        lam = self.eigenvalues(params)
        dt = jnp.exp(params["log_dt"].astype(self._acc))
        if self.discretization == "zoh":
            lam_bar = jnp.exp(dt * lam)
            return lam_bar, (lam_bar - 1) / lam
        denom = 1 - (dt / 2) * lam
        return (1 + (dt / 2) * lam) / denom, dt / denom

    def decay(self, params: Params) -> jax.Array:
        return self._discretize(params)[0]

    def project_inputs(self, params: Params, x: jax.Array) -> Projected:
        half = self.state_size // 2
        w = jnp.concatenate([params["b_re"], params["b_im"]], axis=1).astype(self.dtype)
        z = jnp.matmul(x.astype(self.dtype), w, preferred_element_type=self._acc)
        _, gain = self._discretize(params)
        bu = gain * lax.complex(z[..., :half], z[..., half:])
        return bu, params["d"].astype(self._acc) * self._features(x)

    def _readout(
        self, params: Params, h: jax.Array, skip: jax.Array, h_bwd: jax.Array | None = None
    ) -> jax.Array:
        # Re(C̃ h) = h_re·C_re − h_im·C_im: one real matmul in `dtype` over the stacked parts.
        parts, weights = [h.real, h.imag], [params["c_re"], -params["c_im"]]
        if h_bwd is not None:
            parts += [h_bwd.real, h_bwd.imag]
            weights += [params["c_bwd_re"], -params["c_bwd_im"]]
        y = jnp.matmul(
            jnp.concatenate(parts, axis=-1).astype(self.dtype),
            jnp.concatenate(weights, axis=0).astype(self.dtype),
            preferred_element_type=self._acc,
        )
        return (2 * y + skip).astype(self.dtype)

    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        if self.bidirectional:
            return f"{self._label} with bidirectional=True has no step form (it reads future tokens)"
        return super().step_unsupported(streaming=streaming)

    def _no_step(self) -> TypeError:
        return TypeError(
            "S5 with bidirectional=True has no step form: its backward pass reads future tokens. Use `apply` "
            "on whole sequences, or bidirectional=False for streaming."
        )

    def step(
        self,
        params: Params,
        state: jax.Array,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """One token `x` [*batch, H]; see `Cell.step`. Not available with `bidirectional=True`."""
        if self.bidirectional:
            raise self._no_step()
        return super().step(params, state, x, reset=reset, mask=mask)

    def recur(self, params: Params, state: jax.Array, projected: Projected) -> tuple[jax.Array, jax.Array]:
        if self.bidirectional:
            raise self._no_step()
        return super().recur(params, state, projected)

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: Any = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """`xs` [*batch, T, H] -> (`ys` [*batch, T, H], final state)."""
        if not self.bidirectional:
            return super().apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        axis = xs.ndim - 2
        bu, skip = self.project_inputs(params, xs)
        lam_bar = self.decay(params)
        run = lambda h0, flags, reverse: self._recurrence(
            lam_bar,
            bu,
            h0,
            axis=axis,
            resets=flags,
            mask=mask,
            reverse=reverse,
            method=self.method,
            chunk_size=self.chunk_size,
        )
        hs_f, final_f = run(state["forward"], resets, False)
        # Right to left a segment's state is cleared after its first token, as in every reversed cell.
        hs_b, final_b = run(state["backward"], None if resets is None else reverse_resets(resets, axis), True)
        ys = _zero_padding(self._readout(params, hs_f, skip, hs_b), mask)
        finals = {
            "forward": final_f.astype(complex_dtype(state["forward"].dtype)),
            "backward": final_b.astype(complex_dtype(state["backward"].dtype)),
        }
        return ys, finals


# ==================================================================================================
# LRU
# ==================================================================================================
@register("lru")
@dataclasses.dataclass(frozen=True)
class LRU(_DiagonalSSM):
    """Linear recurrent unit (Orvieto et al. 2023, "Resurrecting recurrent neural networks for long
    sequences").

        λ = exp(−exp(ν) + i·exp(θ))                         (ν = nu_log, θ = theta_log; |λ| < 1 always)
        h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t)                      h: [*batch, N] complex, γ = exp(gamma_log)
        y_t = Re(C h_t) + D ⊙ x_t

    N = `state_size` complex modes, no conjugate pairing. Initialisation as in the paper: λ uniform on
    the ring r_min ≤ |λ| ≤ r_max (uniform in area, i.e. |λ|² uniform in [r_min², r_max²]) with phase
    uniform in [0, max_phase]; γ = √(1 − |λ|²) so each mode's stationary variance matches its input's;
    B = (N(0,1) + i·N(0,1))/√(2H); C = (N(0,1) + i·N(0,1))/√N; D ~ N(0, 1).

    Parameters (float32; stored input-major, i.e. transposed relative to the paper):
      nu_log, theta_log, gamma_log [N]    the recurrence and its normalisation.
      b_re, b_im [H, N]                   Bᵀ.
      c_re, c_im [N, H]                   Cᵀ.
      d [H]                               D.

    `param_groups()`: nu_log, theta_log, gamma_log are "ssm" (the paper trains them at a reduced learning
    rate); B, C, D are "default".

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.LRU(hidden_size=3, state_size=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, state.shape
    ((2, 5, 3), (2, 4))
    """

    hidden_size: int
    state_size: int = 64
    r_min: float = 0.9
    r_max: float = 0.999
    max_phase: float = 2 * math.pi
    reverse: bool = False
    method: str = "auto"
    chunk_size: int = DEFAULT_CHUNK
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        self._check_common()
        if not 0 <= self.r_min < self.r_max < 1:
            raise ValueError(
                f"LRU: need 0 <= r_min < r_max < 1 (the ring of initial |λ|), got r_min={self.r_min}, "
                f"r_max={self.r_max}."
            )
        if not self.max_phase > 0:
            raise ValueError(f"LRU: max_phase must be positive, got {self.max_phase}.")

    @property
    def _state_shape(self) -> tuple[int, ...]:
        return (self.state_size,)

    def init(self, key: jax.Array, input_size: int) -> Params:
        self._check_input_size(input_size)
        h, n, pd = self.hidden_size, self.state_size, self.param_dtype
        k_r, k_p, k_bre, k_bim, k_cre, k_cim, k_d = jax.random.split(key, 7)
        # Open interval (0, 1): log(0) would make ν or θ infinite.
        tiny = float(jnp.finfo(jnp.float32).tiny)
        u_r = jax.random.uniform(k_r, (n,), jnp.float32, minval=tiny)
        u_p = jax.random.uniform(k_p, (n,), jnp.float32, minval=tiny)
        mod2 = u_r * (self.r_max**2 - self.r_min**2) + self.r_min**2
        nu_log = jnp.log(-0.5 * jnp.log(mod2))
        theta_log = jnp.log(self.max_phase * u_p)
        gamma_log = 0.5 * jnp.log1p(-jnp.exp(-2 * jnp.exp(nu_log)))
        return {
            "nu_log": nu_log.astype(pd),
            "theta_log": theta_log.astype(pd),
            "gamma_log": gamma_log.astype(pd),
            "b_re": jax.random.normal(k_bre, (h, n), pd) / math.sqrt(2 * h),
            "b_im": jax.random.normal(k_bim, (h, n), pd) / math.sqrt(2 * h),
            "c_re": jax.random.normal(k_cre, (n, h), pd) / math.sqrt(n),
            "c_im": jax.random.normal(k_cim, (n, h), pd) / math.sqrt(n),
            "d": jax.random.normal(k_d, (h,), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "nu_log": ("ssm_state",),
            "theta_log": ("ssm_state",),
            "gamma_log": ("ssm_state",),
            "b_re": ("embed", "ssm_state"),
            "b_im": ("embed", "ssm_state"),
            "c_re": ("ssm_state", "embed"),
            "c_im": ("ssm_state", "embed"),
            "d": ("embed",),
        }

    def param_groups(self) -> dict[str, str]:
        ssm = {"nu_log", "theta_log", "gamma_log"}
        return {k: "ssm" if k in ssm else "default" for k in self.param_axes()}

    def decay(self, params: Params) -> jax.Array:
        """λ [N] (complex)."""
        nu, theta = (
            jnp.exp(params["nu_log"].astype(self._acc)),
            jnp.exp(params["theta_log"].astype(self._acc)),
        )
        return jnp.exp(lax.complex(-nu, theta))

    def project_inputs(self, params: Params, x: jax.Array) -> Projected:
        n = self.state_size
        w = jnp.concatenate([params["b_re"], params["b_im"]], axis=1).astype(self.dtype)
        z = jnp.matmul(x.astype(self.dtype), w, preferred_element_type=self._acc)
        gamma = jnp.exp(params["gamma_log"].astype(self._acc))
        bu = lax.complex(gamma * z[..., :n], gamma * z[..., n:])
        return bu, params["d"].astype(self._acc) * self._features(x)

    def _readout(self, params: Params, h: jax.Array, skip: jax.Array) -> jax.Array:
        y = jnp.matmul(
            jnp.concatenate([h.real, h.imag], axis=-1).astype(self.dtype),
            jnp.concatenate([params["c_re"], -params["c_im"]], axis=0).astype(self.dtype),
            preferred_element_type=self._acc,
        )
        return (y + skip).astype(self.dtype)
