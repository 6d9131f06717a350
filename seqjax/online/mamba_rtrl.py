"""Exact real-time recurrent learning for Mamba's selective recurrence.

Mamba's state update (per channel d of the inner width Di, per state index n < N),

    x_t  = SiLU(Σ_k conv_w[k] ⊙ x_in_{t−K+1+k} + conv_b),   x_in = u W_in,x   (the causal conv)
    h_t  = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t ⊙ x_t) ⊗ B_t,     Δ_t, B_t functions of x_t (x_proj, dt_proj),

is diagonal in the state: ∂h_t/∂h_{t−1} = exp(Δ_t A), element-wise. Its decay depends on the input, not
on the state, so the traces e = ∂h/∂θ stay exact with the same recursion as Zucchet et al. (2023),
e_t = exp(Δ_t A) ⊙ e_{t−1} + ∂h_t/∂θ|_{h_{t−1}}. What differs from LRU is how far each parameter
reaches, which sets the shape of its trace (one example, N states per channel):

- A_log [Di, N] and dt_bias [Di] feed only their own channel (and state): traces [Di, N].
- dt_proj [R, Di]: column d feeds channel d: trace [R, Di, N].
- x_proj's B columns [Di, N]: W_B[j, n] feeds state n of every channel: trace [Di, Di, N].
- x_proj's Δ columns [Di, R]: every entry feeds every state: trace [Di, R, Di, N].
- conv_b [Di], conv_w [K, Di] and the x half of in_proj [d_model, Di] act through x_t, which feeds
  every state through Δ and B: traces [Di, Di, N], [K, Di, Di, N] and [d_model, Di, Di, N], advanced with
  the Jacobian ∂h_t/∂x_t (Di forward-mode products per token). The conv's window of the last K − 1 inputs
  is itself state: its sensitivity to in_proj is the last K − 1 cell inputs, kept as a trace too.
- x_proj's C columns, D, out_proj and the z half of in_proj act after the state: their exact gradient
  comes from the current token alone.

So every parameter of the cell gets BPTT's gradient (tested in float64 with resets and padding). The
immediate derivatives are forward-mode products through the cell's own `ssm_update`, `conv_step` and
`project_inputs` (`jax.jvp`, `jax.jacfwd`); only the conv's linear chain rule is written out here.
Memory per example: O(Di·N·(d_model·Di + R·Di + K·Di)), dominated by in_proj's trace: at d_model = 32,
expand 2 (Di = 64), N = 16 that is 2.4 M numbers (9.5 MiB in float32); work per token the same order. For
a wide model use `OnlineTBPTT`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells.mamba import Mamba, MambaState
from seqjax.online.learner import LayerTracer

__all__ = ["MambaTracer"]

PyTree = Any


def _zeros_except(params: PyTree, name: str, value: jax.Array) -> PyTree:
    return {k: (value if k == name else jnp.zeros_like(v)) for k, v in params.items()}


@dataclasses.dataclass(frozen=True)
class MambaTracer(LayerTracer):
    """Exact traces of one Mamba cell (see the module docstring).

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Mamba(d_model=3, state_size=2, expand=1)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> tracer = MambaTracer(cell)
    >>> traces = tracer.init(params, cell.initial_state(()), 3)
    >>> traces = jax.jit(tracer.update)(params, traces, cell.initial_state(()), jnp.ones(3))
    >>> traces["in_proj"].shape, traces["x_proj_delta"].shape   # [d_model, Di, Di, N], [Di, R, Di, N]
    ((3, 3, 3, 2), (3, 1, 3, 2))
    """

    cell: Mamba

    def init(self, params: PyTree, state: MambaState, input_size: int) -> dict[str, jax.Array]:
        cell, h = self.cell, state.ssm
        di, rank, k = cell.d_inner, cell.rank, cell.d_conv
        z = lambda *lead: jnp.zeros((*lead, *h.shape), h.dtype)
        return {
            "A_log": z(),
            "dt_bias": z(),
            "dt_proj": z(rank),
            "x_proj_b": z(di),
            "x_proj_delta": z(di, rank),
            "conv_b": z(di),
            "conv_w": z(k, di),
            "in_proj": z(input_size, di),
            "inputs": jnp.zeros((k - 1, input_size), h.dtype),  # the conv window's cell inputs
        }

    def update(
        self, params: PyTree, traces: dict[str, jax.Array], state: MambaState, u: jax.Array
    ) -> dict[str, jax.Array]:
        cell, h = self.cell, state.ssm
        dtype, di, rank, n = h.dtype, cell.d_inner, cell.rank, cell.state_size
        x_in, _ = jnp.split(cell.project_inputs(params, u), 2, axis=-1)
        window, pre = cell.conv_step(params, state.conv, x_in)
        x, silu_slope = jax.jvp(jax.nn.silu, (pre,), (jnp.ones_like(pre),))  # SiLU'(pre), element-wise
        decay = jnp.exp(cell._ssm_inputs(params, x)[0][:, None] * cell._a_matrix(params))  # [Di, N]

        def direct(name: str, tangent: jax.Array) -> jax.Array:
            """∂h_t/∂params along `tangent` on the parameter `name`, with h_{t−1} and x_t held."""
            return jax.jvp(
                lambda p: cell.ssm_update(p, h, x), (params,), (_zeros_except(params, name, tangent),)
            )[1]

        new = {}
        # Element-wise in the state: a jvp along all-ones gives each entry's own derivative.
        new["A_log"] = direct("A_log", jnp.ones_like(params["A_log"]))
        new["dt_bias"] = direct("dt_bias", jnp.ones_like(params["dt_bias"]))
        # dt_proj[r, :] feeds channel d through its column d: one jvp per row r.
        new["dt_proj"] = jax.vmap(
            lambda r: direct("dt_proj", jnp.zeros_like(params["dt_proj"]).at[r].set(1))
        )(jnp.arange(rank))
        # x_proj's B columns: W_B[j, n] feeds state n only, so one jvp per row j covers every n.
        new["x_proj_b"] = jax.vmap(
            lambda j: direct("x_proj", jnp.zeros_like(params["x_proj"]).at[j, rank : rank + n].set(1))
        )(jnp.arange(di))
        # x_proj's Δ columns feed every state: one jvp per entry.
        entry = lambda j, r: direct("x_proj", jnp.zeros_like(params["x_proj"]).at[j, r].set(1))
        new["x_proj_delta"] = jax.vmap(lambda j: jax.vmap(lambda r: entry(j, r))(jnp.arange(rank)))(
            jnp.arange(di)
        )
        # Through x_t: J[j] = ∂h_t/∂x_t[j] [Di, N], times ∂x_t[j]/∂θ (the conv's linear chain rule).
        jac = jnp.moveaxis(jax.jacfwd(lambda xx: cell.ssm_update(params, h, xx))(x), -1, 0)  # [Di, Di, N]
        through_x = silu_slope[:, None, None] * jac  # per unit change of the conv's pre-activation
        inputs = jnp.concatenate([traces["inputs"], u[None].astype(dtype)], axis=0)  # [K, d_model]
        new["conv_b"] = through_x
        new["conv_w"] = window[:, :, None, None] * through_x[None]
        conv_of_inputs = jnp.einsum("kj,kd->jd", inputs, params["conv_w"].astype(dtype))  # [d_model, Di]
        new["in_proj"] = conv_of_inputs[:, :, None, None] * through_x[None]
        out = {name: (decay * traces[name] + g).astype(dtype) for name, g in new.items()}
        out["inputs"] = inputs[1:]
        return out

    def contract(self, params: PyTree, traces: dict[str, jax.Array], delta: MambaState) -> PyTree:
        cell = self.cell
        di, rank, n = cell.d_inner, cell.rank, cell.state_size
        dh, dconv = delta.ssm, delta.conv  # [Di, N], [K − 1, Di]
        grads = {k: jnp.zeros_like(v) for k, v in params.items()}
        put = lambda name, g: grads.__setitem__(name, g.astype(params[name].dtype))
        put("A_log", dh * traces["A_log"])
        put("dt_bias", jnp.sum(dh * traces["dt_bias"], axis=-1))
        put("dt_proj", jnp.einsum("rdn,dn->rd", traces["dt_proj"], dh))
        x_proj = jnp.zeros_like(params["x_proj"])
        x_proj = x_proj.at[:, :rank].set(jnp.einsum("jrdn,dn->jr", traces["x_proj_delta"], dh))
        x_proj = x_proj.at[:, rank : rank + n].set(jnp.einsum("jdn,dn->jn", traces["x_proj_b"], dh))
        put("x_proj", x_proj)
        put("conv_b", jnp.einsum("jdn,dn->j", traces["conv_b"], dh))
        put("conv_w", jnp.einsum("kjdn,dn->kj", traces["conv_w"], dh))
        # in_proj's x half: through the state h, and through the conv window (the last K − 1 x_in).
        w_in = jnp.einsum("ijdn,dn->ij", traces["in_proj"], dh) + jnp.einsum(
            "kd,kj->jd", dconv.astype(dh.dtype), traces["inputs"]
        )
        put("in_proj", jnp.zeros_like(params["in_proj"]).at[:, :di].set(w_in))
        return grads
