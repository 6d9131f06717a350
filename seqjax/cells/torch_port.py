"""Reading single-layer torch.nn.LSTM / torch.nn.GRU weights. torch itself is never imported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from seqjax.cells.bidirectional import Bidirectional

__all__ = ["TorchRNNPort", "read_torch_rnn"]


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def read_torch_rnn(
    state_dict: Mapping[str, Any], *, kind: str, num_gates: int, suffix: str = "l0"
) -> tuple[int, int, dict[str, np.ndarray]]:
    """Returns (input_size, hidden_size, weights) from a torch RNN state dict.

    `weights` holds seqjax's layout: w_ih [input, G·H], w_hh [H, G·H], b_ih, b_hh [G·H]; torch stores
    the transposes. `suffix` picks the layer/direction ("l0", "l0_reverse", "l1", ...). A module built
    with bias=False gives zero biases.
    """
    keys = {f"weight_ih_{suffix}", f"weight_hh_{suffix}"}
    missing = sorted(k for k in keys if k not in state_dict)
    if missing:
        raise KeyError(
            f"{kind} state dict has no {', '.join(missing)}; found keys {sorted(state_dict)}. Pass the "
            f"state dict of a torch.nn.{kind} (or choose the layer with suffix=..., e.g. 'l0')."
        )
    if any(k.startswith(f"weight_hr_{suffix}") for k in state_dict):
        raise ValueError(f"{kind} with proj_size > 0 has no seqjax equivalent; use proj_size=0.")
    w_ih = _to_numpy(state_dict[f"weight_ih_{suffix}"])
    w_hh = _to_numpy(state_dict[f"weight_hh_{suffix}"])
    hidden = w_hh.shape[1]
    if w_hh.shape != (num_gates * hidden, hidden) or w_ih.shape[0] != num_gates * hidden:
        raise ValueError(
            f"{kind} weights have shapes weight_ih {w_ih.shape}, weight_hh {w_hh.shape}; expected "
            f"[{num_gates}·H, input] and [{num_gates}·H, H] — is this really a torch.nn.{kind}?"
        )
    zeros = np.zeros(num_gates * hidden, np.float32)
    b_ih = _to_numpy(state_dict.get(f"bias_ih_{suffix}", zeros))
    b_hh = _to_numpy(state_dict.get(f"bias_hh_{suffix}", zeros))
    weights = {"w_ih": w_ih.T.copy(), "w_hh": w_hh.T.copy(), "b_ih": b_ih, "b_hh": b_hh}
    return w_ih.shape[1], hidden, weights


def check_torch_module(module: Any, kind: str) -> None:
    """Rejects the torch module options that a single seqjax cell cannot represent."""
    if type(module).__name__ != kind:
        raise TypeError(f"expected a torch.nn.{kind}, got {type(module).__name__}.")
    if getattr(module, "num_layers", 1) != 1:
        raise ValueError(
            f"torch.nn.{kind} has num_layers={module.num_layers}; seqjax cells are one layer. Convert each "
            f"layer with {kind}.from_torch_state_dict(sd, suffix='l<k>') and stack them."
        )
    if getattr(module, "proj_size", 0):
        raise ValueError(f"torch.nn.{kind} with proj_size={module.proj_size} is not supported.")


class TorchRNNPort:
    """`from_torch` / `from_torch_state_dict` for cells whose parameters are torch's RNN weights.

    The cell class sets `torch_kind` ("LSTM", "GRU") and `torch_gates` (4, 3), and has a `hidden_size`
    field, a `reverse` field and a `param_dtype`.
    """

    torch_kind: ClassVar[str]
    torch_gates: ClassVar[int]

    @classmethod
    def from_torch_state_dict(
        cls, state_dict: Mapping[str, Any], *, suffix: str = "l0", **hparams: Any
    ) -> tuple[Any, dict[str, Any]]:
        """(cell, params) from a torch RNN state dict; `suffix` picks the layer ("l0", "l0_reverse", "l1")."""
        _, hidden, weights = read_torch_rnn(
            state_dict, kind=cls.torch_kind, num_gates=cls.torch_gates, suffix=suffix
        )
        cell = cls(hidden_size=hidden, **hparams)
        return cell, {k: jnp.asarray(v, cell.param_dtype) for k, v in weights.items()}

    @classmethod
    def from_torch(cls, module: Any, **hparams: Any) -> tuple[Any, dict[str, Any]]:
        """(cell, params) computing the same function as a one-layer torch RNN module of this kind.

        `batch_first` does not matter: seqjax is always batch-major. A bidirectional module gives a
        `Bidirectional` cell whose output concatenates forward and backward features, as torch does.
        """
        check_torch_module(module, cls.torch_kind)
        sd = module.state_dict()
        fwd, fwd_params = cls.from_torch_state_dict(sd, suffix="l0", **hparams)
        if not module.bidirectional:
            return fwd, fwd_params
        bwd, bwd_params = cls.from_torch_state_dict(sd, suffix="l0_reverse", reverse=True, **hparams)
        return Bidirectional(forward=fwd, backward=bwd), {"forward": fwd_params, "backward": bwd_params}
