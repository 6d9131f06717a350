"""LSTM and GRU compute exactly torch.nn.LSTM / torch.nn.GRU after `from_torch`: values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells

torch = pytest.importorskip("torch")

B, T, F, H = 3, 17, 6, 10


def _torch_module(kind: str, **kwargs):
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(F, H, **kwargs)
    with torch.no_grad():  # non-default biases, so a swapped or dropped bias would show
        for name, p in module.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return module


def _run_torch(module, x: np.ndarray, batch_first: bool):
    xt = torch.tensor(x, requires_grad=True)
    inp = xt if batch_first else xt.transpose(0, 1)
    out, _ = module(inp)
    out = out if batch_first else out.transpose(0, 1)
    (torch.sin(out) ** 2).sum().backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in module.named_parameters()}
    return out.detach().numpy(), xt.grad.numpy(), grads


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_values_and_gradients(kind, batch_first, bias):
    module = _torch_module(kind, batch_first=batch_first, bias=bias)
    x = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
    out_t, dx_t, grads_t = _run_torch(module, x, batch_first)

    cell, params = getattr(cells, kind).from_torch(module)
    ys, state = cell.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(ys, out_t, atol=2e-6)
    final_h = state.h if kind == "LSTM" else state
    np.testing.assert_allclose(final_h, out_t[:, -1], atol=2e-6)

    loss = lambda p, x: jnp.sum(jnp.sin(cell.apply(p, x)[0]) ** 2)
    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    np.testing.assert_allclose(g_x, dx_t, atol=1e-5)
    # torch's parameter gradients are the transposes of ours; with bias=True, b_ih and b_hh get
    # their own gradients (equal for LSTM, different for GRU's n-gate).
    np.testing.assert_allclose(g_params["w_ih"].T, grads_t["weight_ih_l0"], atol=1e-5)
    np.testing.assert_allclose(g_params["w_hh"].T, grads_t["weight_hh_l0"], atol=1e-5)
    if bias:
        np.testing.assert_allclose(g_params["b_ih"], grads_t["bias_ih_l0"], atol=1e-5)
        np.testing.assert_allclose(g_params["b_hh"], grads_t["bias_hh_l0"], atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bidirectional_module_matches_torch(kind):
    module = _torch_module(kind, batch_first=True, bidirectional=True)
    x = np.random.default_rng(1).standard_normal((B, T, F)).astype(np.float32)
    out_t, _, _ = _run_torch(module, x, batch_first=True)
    cell, params = getattr(cells, kind).from_torch(module)
    assert isinstance(cell, cells.Bidirectional)
    ys, _ = cell.apply(params, jnp.asarray(x))
    assert ys.shape == (B, T, 2 * H)
    np.testing.assert_allclose(ys, out_t, atol=2e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_state_dict_route_and_streaming(kind):
    """The state-dict variant gives the same cell; `step` streams torch's outputs token by token."""
    module = _torch_module(kind, batch_first=True)
    sd = {k: v.numpy() for k, v in module.state_dict().items()}
    cell, params = getattr(cells, kind).from_torch_state_dict(sd)
    x = np.random.default_rng(2).standard_normal((B, T, F)).astype(np.float32)
    out_t, _, _ = _run_torch(module, x, batch_first=True)
    state = cell.initial_state((B,))
    step = jax.jit(cell.step)
    for t in range(T):
        state, y = step(params, state, jnp.asarray(x[:, t]))
        np.testing.assert_allclose(y, out_t[:, t], atol=2e-6)


def test_unsupported_torch_modules_are_refused():
    with pytest.raises(ValueError, match="num_layers=2"):
        cells.LSTM.from_torch(torch.nn.LSTM(F, H, num_layers=2))
    with pytest.raises(ValueError, match="proj_size"):
        cells.LSTM.from_torch(torch.nn.LSTM(F, H, proj_size=4))
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.LSTM"):
        cells.LSTM.from_torch(torch.nn.GRU(F, H))
    with pytest.raises(KeyError, match="weight_hh_l0"):
        cells.GRU.from_torch_state_dict({"weight_ih_l0": np.zeros((3 * H, F))})
