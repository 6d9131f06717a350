"""Bad input gets an error that names the problem and the fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from seqjax import cells


@pytest.fixture
def lstm_and_params(key):
    cell = cells.LSTM(hidden_size=4)
    return cell, cell.init(key, 3)


def test_wrong_input_size(lstm_and_params):
    cell, params = lstm_and_params
    with pytest.raises(ValueError, match=r"5 features .* input_size=3"):
        cell.apply(params, jnp.zeros((2, 7, 5)))
    with pytest.raises(ValueError, match=r"5 features .* input_size=3"):
        cell.step(params, cell.initial_state((2,)), jnp.zeros((2, 5)))


def test_wrong_rank(lstm_and_params):
    cell, params = lstm_and_params
    with pytest.raises(ValueError, match=r"rank 1 .*\[\*batch, time, input_size\].*use `step`"):
        cell.apply(params, jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"rank 0"):
        cell.step(params, cell.initial_state(()), jnp.zeros(()))


def test_mask_and_resets_of_wrong_shape(lstm_and_params):
    cell, params = lstm_and_params
    xs = jnp.zeros((2, 7, 3))
    with pytest.raises(ValueError, match=r"`mask` has shape \(2, 6\), expected \(2, 7\)"):
        cell.apply(params, xs, mask=jnp.ones((2, 6), bool))
    with pytest.raises(ValueError, match=r"`resets` has shape \(6,\), expected \(2, 7\)"):
        cell.apply(params, xs, resets=jnp.ones((6,), bool))
    with pytest.raises(TypeError, match="`mask` must be boolean"):
        cell.apply(params, xs, mask=jnp.ones((2, 7), jnp.float32))
    with pytest.raises(ValueError, match=r"`reset` has shape"):
        cell.step(params, cell.initial_state((2,)), xs[:, 0], reset=jnp.ones((3,), bool))


def test_state_of_wrong_batch_shape(lstm_and_params):
    cell, params = lstm_and_params
    with pytest.raises(ValueError, match=r"state leaf has shape \(3, 4\), expected \(2, 4\).*initial_state"):
        cell.apply(params, jnp.zeros((2, 7, 3)), cell.initial_state((3,)))
    with pytest.raises(ValueError, match="structure"):
        cell.apply(params, jnp.zeros((2, 7, 3)), jnp.zeros((2, 4)))


def test_integer_inputs_are_refused(lstm_and_params):
    cell, params = lstm_and_params
    with pytest.raises(TypeError, match="embed token ids first"):
        cell.apply(params, jnp.zeros((2, 7, 3), jnp.int32))


def test_unknown_cell_name_and_hyperparameter():
    with pytest.raises(
        ValueError, match=r"unknown cell 'lstn'; known cells: .*elstm, .*gru, .*lstm, .*Did you mean 'lstm'"
    ):
        cells.get("lstn", hidden_size=4)
    with pytest.raises(TypeError, match=r"no hyperparameter\(s\) 'hidden'.*hidden_size"):
        cells.get("gru", hidden=4)


def test_invalid_hyperparameters():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        cells.LSTM(hidden_size=0)
    with pytest.raises(ValueError, match=r"engine must be one of \('fused', 'scan'\)"):
        cells.LSTM(hidden_size=4, engine="cudnn")
    with pytest.raises(ValueError, match="memory_slots must be a positive integer"):
        cells.ELSTM(hidden_size=4, memory_slots=0)


@pytest.mark.parametrize(
    "cell",
    [
        cells.S5(hidden_size=4, state_size=4),
        cells.Mamba(d_model=4),
        cells.GatedLinearAttention(num_heads=2, head_dim=2),
    ],
    ids=lambda c: type(c).__name__,
)
def test_complex_features_are_refused_where_real_is_required(cell):
    params = cell.init(jax.random.PRNGKey(0), 4)
    with pytest.raises(TypeError, match=r"is complex \(complex64\); cells take real features"):
        cell.apply(params, jnp.ones((1, 3, 4), jnp.complex64))
