"""Pure-functional sequence cells: `init`, `initial_state`, `step`, `apply`, `param_axes`.

from seqjax import cells
cell = cells.LSTM(hidden_size=256)          # or cells.get("lstm", hidden_size=256)
params = cell.init(key, input_size)
ys, state = cell.apply(params, xs)          # xs: [*batch, time, input_size]
"""

from seqjax.cells.attention import (
    Attention,
    AttentionState,
    SlidingWindowAttention,
    SlidingWindowState,
)
from seqjax.cells.base import (
    Axes,
    Cell,
    Params,
    RecurrentCell,
    State,
    check_sequence_parallel,
    with_sequence_axis,
)
from seqjax.cells.bidirectional import Bidirectional
from seqjax.cells.delta_net import DeltaNet, DeltaNetState, GatedDeltaNet
from seqjax.cells.elstm import ELSTM, ELSTMState
from seqjax.cells.gru import GRU
from seqjax.cells.linear_attention import (
    GatedLinearAttention,
    GLAState,
    LinearAttention,
    LinearAttentionState,
    Performer,
    ScalarGatedLinearAttention,
)
from seqjax.cells.linformer import Linformer, LinformerState
from seqjax.cells.longformer import Longformer, LongformerState
from seqjax.cells.lstm import LSTM, LSTMState
from seqjax.cells.mamba import Mamba, MambaState
from seqjax.cells.mamba2 import Mamba2, Mamba2State
from seqjax.cells.registry import get, names, register
from seqjax.cells.rglru import RGLRU, RGLRUState
from seqjax.cells.rwkv7 import RWKV7, RWKV7State
from seqjax.cells.segment_remat import SegmentRemat
from seqjax.cells.ssm import LRU, S4D, S5
from seqjax.cells.xl_attention import TransformerXLAttention, XLAttentionState
from seqjax.cells.xlstm import MLSTM, SLSTM, MLSTMState, SLSTMState

__all__ = [
    "ELSTM",
    "GRU",
    "LRU",
    "LSTM",
    "MLSTM",
    "RGLRU",
    "RWKV7",
    "S4D",
    "S5",
    "SLSTM",
    "Attention",
    "AttentionState",
    "Axes",
    "Bidirectional",
    "Cell",
    "DeltaNet",
    "DeltaNetState",
    "ELSTMState",
    "GLAState",
    "GatedDeltaNet",
    "GatedLinearAttention",
    "LSTMState",
    "LinearAttention",
    "LinearAttentionState",
    "Linformer",
    "LinformerState",
    "Longformer",
    "LongformerState",
    "MLSTMState",
    "Mamba",
    "Mamba2",
    "Mamba2State",
    "MambaState",
    "Params",
    "Performer",
    "RGLRUState",
    "RWKV7State",
    "RecurrentCell",
    "SLSTMState",
    "ScalarGatedLinearAttention",
    "SegmentRemat",
    "SlidingWindowAttention",
    "SlidingWindowState",
    "State",
    "TransformerXLAttention",
    "XLAttentionState",
    "check_sequence_parallel",
    "get",
    "names",
    "register",
    "with_sequence_axis",
]
