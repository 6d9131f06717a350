"""Plain NumPy float64 ports of the xLSTM authors' PyTorch reference code, for tests/test_xlstm.py.

Each function names its source; the ports keep the sources' names, shapes and operation order (torch ops
become their NumPy equivalents, in-place updates become array writes), so they can be read side by side:

- NX-AI/xlstm, `xlstm/blocks/mlstm/backends.py`: `parallel_stabilized_simple`,
  `recurrent_step_stabilized_simple`, `chunkwise_simple`.
- NX-AI/mlstm_kernels, `mlstm_kernels/torch/recurrent/native_step.py`: `mlstm_recurrent_step__native_fw`;
  `mlstm_kernels/torch/chunkwise/native/fw.py`: `mlstm_chunkwise_fw` (with `mlstm_chunkwise__recurrent_fw_C`
  and `mlstm_chunkwise__parallel_fw_H`).
- NX-AI/xlstm, `xlstm/blocks/slstm/src/vanilla/slstm.py`: `slstm_forward_pointwise`;
  `xlstm/blocks/slstm/src/vanilla/__init__.py`: `slstm_forward`; the vanilla cell's recurrent-kernel and
  bias layouts (`xlstm/blocks/slstm/cell.py`, `sLSTMCell_vanilla._recurrent_kernel_ext2int`,
  `_bias_ext2int`).
- The layers around them: `xlstm/blocks/mlstm/layer.py` (`mLSTMLayer.forward` and `.step`),
  `xlstm/blocks/mlstm/cell.py` (`mLSTMCell.forward` and `.step`), `xlstm/blocks/slstm/layer.py`
  (`sLSTMLayer.forward`), `xlstm/components/conv.py` (`CausalConv1d`, `conv1d_step`),
  `xlstm/components/linear_headwise.py` (`LinearHeadwiseExpand`), `xlstm/components/ln.py`
  (`MultiHeadLayerNorm`), with their parameters in torch's layouts (a dict of arrays named as the
  modules' parameters).
"""

from __future__ import annotations

import numpy as np


def logsigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _t(x: np.ndarray) -> np.ndarray:  # torch's x.transpose(-2, -1)
    return np.swapaxes(x, -2, -1)


# --------------------------------------------------------------------------------------------------
# mLSTM: NX-AI/xlstm, xlstm/blocks/mlstm/backends.py
# --------------------------------------------------------------------------------------------------
def parallel_stabilized_simple(queries, keys, values, igate_preact, fgate_preact, eps=1e-6):
    """`parallel_stabilized_simple` (stabilize_rowwise=True). q, k, v (B, NH, S, DH); gates (B, NH, S, 1)."""
    B, NH, S, DH = queries.shape
    log_fgates = logsigmoid(fgate_preact)  # (B, NH, S, 1)
    ltr = np.tril(np.ones((S, S), dtype=bool))
    log_fgates_cumsum = np.concatenate([np.zeros((B, NH, 1, 1)), np.cumsum(log_fgates, axis=-2)], axis=-2)
    rep_log_fgates_cumsum = np.repeat(log_fgates_cumsum, S + 1, axis=-1)  # .repeat(1, 1, 1, S + 1)
    _log_fg_matrix = rep_log_fgates_cumsum - _t(rep_log_fgates_cumsum)
    log_fg_matrix = np.where(ltr, _log_fg_matrix[:, :, 1:, 1:], -np.inf)
    log_D_matrix = log_fg_matrix + _t(igate_preact)
    max_log_D = np.max(log_D_matrix, axis=-1, keepdims=True)
    D_matrix = np.exp(log_D_matrix - max_log_D)
    keys_scaled = keys / np.sqrt(DH)
    qk_matrix = queries @ _t(keys_scaled)
    C_matrix = qk_matrix * D_matrix
    normalizer = np.maximum(np.abs(C_matrix.sum(axis=-1, keepdims=True)), np.exp(-max_log_D))
    C_matrix_normalized = C_matrix / (normalizer + eps)
    return C_matrix_normalized @ values


def recurrent_step_stabilized_simple(
    c_state, n_state, m_state, q, k, v, igate_preact, fgate_preact, eps=1e-6
):
    """`recurrent_step_stabilized_simple`. c (B, NH, DH, DH), n (B, NH, DH, 1), m (B, NH, 1, 1); q, k, v
    (B, NH, 1, DH); gates (B, NH, 1, 1). Returns h (B, NH, 1, DH) and the new (c, n, m)."""
    _B, _NH, _S, DH = q.shape
    q, k, v = q[:, :, 0, :, None], k[:, :, 0, :, None], v[:, :, 0, :, None]  # (B, NH, DH, 1)
    log_fg_act = logsigmoid(fgate_preact)
    m_state_new = np.maximum(log_fg_act + m_state, igate_preact)
    fg_act = np.exp(log_fg_act + m_state - m_state_new)
    ig_act = np.exp(igate_preact - m_state_new)
    k_scaled = k / np.sqrt(DH)
    c_state_new = fg_act * c_state + ig_act * (k_scaled @ _t(v))
    n_state_new = fg_act * n_state + ig_act * k_scaled
    h_num = _t(q) @ c_state_new
    qn_dotproduct = _t(q) @ n_state_new
    max_val = np.exp(-m_state_new)
    h_denom = np.maximum(np.abs(qn_dotproduct), max_val) + eps
    h = h_num / h_denom
    return h, (c_state_new, n_state_new, m_state_new)


def chunkwise_simple(
    queries, keys, values, igate_preact, fgate_preact, initial_C, initial_n, initial_m, chunk_size, eps=1e-6
):
    """`chunkwise_simple` with return_last_state=True. q, k, v (B, NH, S, DH), gates (B, NH, S), S a
    multiple of chunk_size; initial_C (B, NH, DH, DH), initial_n (B, NH, DH), initial_m (B, NH). q is
    scaled by DH^-½ here, so its C and n are √DH times those of the recurrent step (same outputs)."""
    B, NH, S, DH = queries.shape
    NS, CS = S // chunk_size, chunk_size
    q = queries.reshape(B, NH, NS, CS, DH) / np.sqrt(DH)
    k = keys.reshape(B, NH, NS, CS, DH)
    v = values.reshape(B, NH, NS, CS, DH)
    log_fgates = logsigmoid(fgate_preact).reshape(B, NH, NS, CS)
    log_fgates_acc = np.cumsum(log_fgates, axis=3)
    igate_preact = igate_preact.reshape(B, NH, NS, CS)
    loggates = (igate_preact - log_fgates_acc)[:, :, :, :, None]
    m_loc = np.max(loggates + log_fgates_acc[:, :, :, -1, None, None], axis=3, keepdims=True)
    loggates = loggates + log_fgates_acc[:, :, :, -1, None, None] - m_loc
    kv = _t(k) @ (v * np.exp(loggates))
    ksum = (k * np.exp(loggates)).sum(axis=-2)
    C = np.zeros((B, NH, NS + 1, DH, DH))
    n = np.zeros((B, NH, NS + 1, DH))
    C[:, :, 0] = initial_C
    n[:, :, 0] = initial_n
    m = np.zeros((B, NH, NS + 1, 1, 1))
    m[:, :, 0] = initial_m[:, :, None, None]
    for i in range(1, NS + 1):
        m[:, :, i] = np.maximum(
            log_fgates_acc[:, :, i - 1, -1, None, None] + m[:, :, i - 1], m_loc[:, :, i - 1]
        )
        C[:, :, i] = C[:, :, i - 1] * np.exp(
            log_fgates_acc[:, :, i - 1, -1, None, None] + m[:, :, i - 1] - m[:, :, i]
        ) + kv[:, :, i - 1] * np.exp(m_loc[:, :, i - 1] - m[:, :, i])
        n[:, :, i] = n[:, :, i - 1] * np.exp(
            log_fgates_acc[:, :, i - 1, -1, None] + m[:, :, i - 1, 0] - m[:, :, i, 0]
        ) + ksum[:, :, i - 1] * np.exp(m_loc[:, :, i - 1, 0] - m[:, :, i, 0])
    log_fgates_rep = np.repeat(log_fgates_acc[:, :, :, :, None], CS, axis=-1)
    log_fg_matrix = log_fgates_rep - _t(log_fgates_rep) - np.triu(np.inf * np.ones([1, 1, 1, CS, CS]), k=1)
    log_D_matrix = log_fg_matrix + _t(igate_preact[:, :, :, :, None])
    D_max = np.max(log_D_matrix, axis=-1, keepdims=True)
    stab = np.maximum(D_max, m[:, :, :-1, :] + log_fgates_acc[:, :, :, :, None])
    inter_C = (q * np.exp(m[:, :, :-1, :] + log_fgates_acc[:, :, :, :, None] - stab)) @ C[:, :, :-1]
    inter_n = (q * np.exp(m[:, :, :-1, :] + log_fgates_acc[:, :, :, :, None] - stab)) @ n[:, :, :-1, :, None]
    D_matrix = np.exp(log_D_matrix - stab)
    qk_matrix = q @ _t(k)
    E_matrix = qk_matrix * D_matrix
    normalizer = np.maximum(np.abs(E_matrix.sum(axis=-1, keepdims=True) + inter_n), np.exp(-stab))
    E_matrix_normalized = E_matrix / (normalizer + eps)
    intra = E_matrix_normalized @ v
    inter = inter_C / (normalizer + eps)
    return (intra + inter).reshape(B, NH, S, DH), (C[:, :, -1], n[:, :, -1], m[:, :, -1])


# --------------------------------------------------------------------------------------------------
# mLSTM: NX-AI/mlstm_kernels, mlstm_kernels/torch/{recurrent/native_step.py, chunkwise/native/fw.py}
# --------------------------------------------------------------------------------------------------
def mlstm_recurrent_step__native_fw(matC_old, vecN_old, scaM_old, vecQ, vecK, vecV, scaI, scaF, eps=1e-6):
    """`mlstm_recurrent_step__native_fw`. matC (B, NH, DHQK, DHV), vecN (B, NH, DHQK), scaM (B, NH, 1);
    q, k (B, NH, DHQK), v (B, NH, DHV); scaI, scaF (B, NH, 1). q is scaled, so C and n hold unscaled k."""
    _B, _NH, DHQK = vecQ.shape
    scaF_log = logsigmoid(scaF)
    scaM_state_new = np.maximum(scaF_log + scaM_old, scaI)
    scaF_act = np.exp(scaF_log + scaM_old - scaM_state_new)
    scaI_act = np.exp(scaI - scaM_state_new)
    vecQ_scaled = vecQ * (DHQK ** (-0.5))
    matC_state_new = scaF_act[:, :, :, None] * matC_old + scaI_act[:, :, :, None] * (
        vecK[:, :, :, None] @ vecV[:, :, None, :]
    )
    vecN_state_new = scaF_act * vecN_old + scaI_act * vecK
    h_num = (vecQ_scaled[:, :, None, :] @ matC_state_new)[:, :, 0]
    qn_dotproduct = (vecQ_scaled[:, :, None, :] @ vecN_state_new[:, :, :, None])[:, :, 0]
    max_val = np.exp(-scaM_state_new)
    h_denom = np.maximum(np.abs(qn_dotproduct), max_val) + eps
    h = h_num / h_denom
    return h, (matC_state_new, vecN_state_new, scaM_state_new)


def mlstm_chunkwise__recurrent_fw_C(
    matK, matV, vecB, vecI, matC_initial, vecN_initial, scaMinter_initial, NC, L
):
    B, NH, _S, DHQK = matK.shape
    DHHV = matV.shape[-1]
    matC_states = np.zeros((B, NH, (NC + 1) * DHQK, DHHV))
    vecN_states = np.zeros((B, NH, (NC + 1) * DHQK))
    scaMinter_states = np.zeros((B, NH, NC + 1))
    matC_k, vecN_k, scaM_inter_k = matC_initial, vecN_initial, scaMinter_initial
    vecA = vecB[..., -1, None] - vecB + vecI
    scaG = vecB[..., -1]
    scaA_max = vecA.max(-1)
    scaM_inter_k = scaM_inter_k[..., 0]
    for k in range(NC):
        matC_states[:, :, k * DHQK : (k + 1) * DHQK, :] = matC_k
        vecN_states[:, :, k * DHQK : (k + 1) * DHQK] = vecN_k
        scaMinter_states[:, :, k] = scaM_inter_k
        scaA_max_k = scaA_max[:, :, k]
        scaG_k = scaG[:, :, k]
        scaM_inter_k_next = np.maximum(scaG_k + scaM_inter_k, scaA_max_k)
        matK_chunk = matK[:, :, k * L : (k + 1) * L, :]
        matV_chunk = matV[:, :, k * L : (k + 1) * L, :]
        vecA_k = vecA[:, :, k, :]
        vecAbar_k = np.exp(vecA_k - scaM_inter_k_next[..., None])[:, :, :, None]
        matK_chunk_gated = matK_chunk * vecAbar_k
        scaGbar_k = np.exp(scaG_k + scaM_inter_k - scaM_inter_k_next)[:, :, None]
        matC_k_next = scaGbar_k[..., None] * matC_k + _t(matK_chunk_gated) @ matV_chunk
        vecN_k_next = scaGbar_k * vecN_k + _t(matK_chunk_gated).sum(-1)
        scaM_inter_k, matC_k, vecN_k = scaM_inter_k_next, matC_k_next, vecN_k_next
    matC_states[:, :, -DHQK:, :] = matC_k
    vecN_states[:, :, -DHQK:] = vecN_k
    scaMinter_states[:, :, -1] = scaM_inter_k
    return matC_states, vecN_states, scaMinter_states


def mlstm_chunkwise__parallel_fw_H(
    matQ, matK, matV, matC_states, vecN_states, scaMinter_states, vecI, vecB, qk_scale, L, NC, eps
):
    B, NH, S, DHQK = matQ.shape
    DHHV = matV.shape[-1]
    matC_k_states = matC_states.reshape(B, NH, NC, DHQK, DHHV)
    vecN_k_states = vecN_states.reshape(B, NH, NC, DHQK)
    matQ = matQ.reshape(B, NH, NC, L, DHQK)
    matK = matK.reshape(B, NH, NC, L, DHQK)
    matV = matV.reshape(B, NH, NC, L, DHHV)
    ltr = np.tril(np.ones((L, L), dtype=bool))
    matF_logsig_chunk = vecB[:, :, :, :, None] - vecB[:, :, :, None, :]
    matF_logsig_mask_chunk = np.where(ltr, matF_logsig_chunk, -np.inf)
    matLogD_chunk = matF_logsig_mask_chunk + vecI[:, :, :, None, :]
    vecMintra_k = np.max(matLogD_chunk, axis=-1)
    vecM_b_inter = vecB + scaMinter_states[:, :, :, None]
    vecM_k_combine = np.maximum(vecM_b_inter, vecMintra_k)[:, :, :, :, None]
    vecM_b_inter = vecM_b_inter[:, :, :, :, None]
    matD_chunk = np.exp(matLogD_chunk - vecM_k_combine)
    matS_chunk = (matQ @ _t(matK)) * qk_scale
    matM_chunk = matS_chunk * matD_chunk
    vecBbar = np.exp(vecM_b_inter - vecM_k_combine)
    matQ_chunk_gated = matQ * vecBbar * qk_scale
    matNumerator_common = matQ_chunk_gated @ matC_k_states + matM_chunk @ matV
    vecDenom_l_common = matQ_chunk_gated @ vecN_k_states[..., None] + matM_chunk.sum(axis=-1, keepdims=True)
    vecDenom_max_common = np.maximum(np.abs(vecDenom_l_common), np.exp(-vecM_k_combine))
    matH_k_chunk = matNumerator_common / (vecDenom_max_common + eps)
    return matH_k_chunk.reshape(B, NH, S, DHHV)


def mlstm_chunkwise_fw(
    matQ, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial, chunk_size, eps=1e-6
):
    """`mlstm_chunkwise_fw` with return_last_states=True: (matH (B, NH, S, DHV), (C, n, m) last).
    scaM_initial (B, NH, 1). q is scaled, so C and n hold unscaled k, as in the native step."""
    B, NH, S, DHQK = matQ.shape
    NC = S // chunk_size
    vecI = vecI.reshape(B, NH, NC, chunk_size)
    vecF = vecF.reshape(B, NH, NC, chunk_size)
    vecB = np.cumsum(logsigmoid(vecF), axis=-1)
    qk_scale = DHQK**-0.5
    matC_k_states, vecN_k_states, scaMinter_k_states = mlstm_chunkwise__recurrent_fw_C(
        matK, matV, vecB, vecI, matC_initial, vecN_initial, scaM_initial, NC, chunk_size
    )
    matH_out = mlstm_chunkwise__parallel_fw_H(
        matQ,
        matK,
        matV,
        matC_k_states[:, :, :-DHQK, :],
        vecN_k_states[:, :, :-DHQK],
        scaMinter_k_states[:, :, :-1],
        vecI,
        vecB,
        qk_scale,
        chunk_size,
        NC,
        eps,
    )
    last = (matC_k_states[:, :, -DHQK:, :], vecN_k_states[:, :, -DHQK:], scaMinter_k_states[:, :, -1:])
    return matH_out, last


# --------------------------------------------------------------------------------------------------
# sLSTM: NX-AI/xlstm, xlstm/blocks/slstm/src/vanilla/{slstm.py, __init__.py}, slstm/cell.py
# --------------------------------------------------------------------------------------------------
def slstm_forward_pointwise(Wx, Ry, b, states):
    """`slstm_forward_pointwise` (vanilla). Wx, Ry (B, 4H), b (1, 4H) or (4H,), states (4, B, H)."""
    raw = Wx + Ry + b
    _y, c, n, m = states
    iraw, fraw, zraw, oraw = np.moveaxis(raw.reshape(raw.shape[0], 4, -1), 1, 0)
    logfplusm = m + logsigmoid(fraw)
    if np.all(n == 0.0):  # noqa: SIM108 (the source's form)
        mnew = iraw
    else:
        mnew = np.maximum(iraw, logfplusm)
    ogate = 1 / (1 + np.exp(-oraw))
    igate = np.minimum(np.exp(iraw - mnew), np.ones_like(iraw))
    fgate = np.minimum(np.exp(logfplusm - mnew), np.ones_like(iraw))
    cnew = fgate * c + igate * np.tanh(zraw)
    nnew = fgate * n + igate
    ynew = ogate * cnew / nnew
    return np.stack((ynew, cnew, nnew, mnew), axis=0)


def recurrent_kernel_ext2int(R_ext):
    """`sLSTMCell_vanilla._recurrent_kernel_ext2int`: (NH, DH, 4, DH) -> (NH, 4 DH, DH)."""
    NH, DH, G, _ = R_ext.shape
    return np.transpose(R_ext.reshape(NH, DH, G, DH), (0, 2, 3, 1)).reshape(NH, G * DH, DH)


def bias_ext2int(b_ext):
    """`sLSTMCell_vanilla._bias_ext2int`: (NH, 4, DH) -> (4 NH DH,)."""
    return np.transpose(b_ext, (1, 0, 2)).reshape(-1)


def slstm_forward(x, states, R, b):
    """`slstm_forward` with the sLSTM pointwise function. x (S, B, 4H) in gate-head-dim order, states
    (4, B, H), R (NH, 4 DH, DH) internal, b (4H,). Returns states_all (4, S + 1, B, H)."""
    num_states = states.shape[0]
    sequence_dim = x.shape[0]
    num_gates_r = R.shape[1] // R.shape[2]
    hidden_dim = R.shape[2] * R.shape[0]
    batch_dim = x.shape[1]
    num_heads = R.shape[0]
    head_dim = R.shape[2]
    states_all = np.zeros([num_states, sequence_dim + 1, batch_dim, hidden_dim])
    states_all[:, 0] = states
    for i, Wx_t in enumerate(x):
        Ry = (
            (
                states[0].reshape(batch_dim, num_heads, 1, -1)
                @ _t(R).reshape(1, num_heads, head_dim, num_gates_r * head_dim)
            )
            .reshape(batch_dim, num_heads, num_gates_r, -1)
            .transpose(0, 2, 1, 3)
            .reshape(batch_dim, -1)
        )
        states = slstm_forward_pointwise(Wx_t, Ry, b, states)
        states_all[:, i + 1] = states
    return states_all


# --------------------------------------------------------------------------------------------------
# The layers (NX-AI/xlstm, xlstm/components/*, xlstm/blocks/{mlstm,slstm}/layer.py, mlstm/cell.py)
# --------------------------------------------------------------------------------------------------
def silu(x):
    return x / (1 + np.exp(-x))


def causal_conv1d(x, weight, bias):
    """`CausalConv1d.forward`: torch's depthwise Conv1d with padding K − 1, the last K − 1 outputs cut.
    x (B, T, F); weight (F, 1, K); bias (F,)."""
    K = weight.shape[-1]
    padded = np.concatenate([np.zeros((x.shape[0], K - 1, x.shape[2])), x], axis=1)
    return sum(weight[:, 0, j] * padded[:, j : j + x.shape[1]] for j in range(K)) + bias


def conv1d_step(x, conv_state, weight_ks_d, bias):
    """`conv1d_step`: x (B, 1, D), conv_state (B, KS, D), weight (KS, D)."""
    conv_state = np.roll(conv_state, shift=-1, axis=1)
    conv_state[:, -1:, :] = x
    y = np.sum(conv_state * weight_ks_d, axis=1, keepdims=True) + bias
    return y, conv_state


def linear_headwise(x, weight):
    """`LinearHeadwiseExpand.forward` without bias: weight (NH, out/NH, in/NH)."""
    shape = x.shape
    x = x.reshape(*shape[:-1], weight.shape[0], -1)
    return np.einsum("...hd,hod->...ho", x, weight).reshape(*shape[:-1], -1)


def multihead_layer_norm(x, weight, eps=1e-5):
    """`MultiHeadLayerNorm.forward` (group_norm with NH groups, weight 1 + w, no bias): x (B, NH, S, DH)."""
    B, NH, S, DH = x.shape
    gn_in = np.swapaxes(x, 1, 2).reshape(B * S, NH, DH)
    mean = gn_in.mean(-1, keepdims=True)
    var = gn_in.var(-1, keepdims=True)
    out = ((gn_in - mean) / np.sqrt(var + eps)).reshape(B * S, NH * DH) * (1.0 + weight)
    return np.swapaxes(out.reshape(B, S, NH, DH), 1, 2)


def mlstm_layer_forward(p, x, num_heads, eps=1e-6):
    """`mLSTMLayer.forward` with `mLSTMCell.forward` (the parallel_stabilized_simple backend).
    p: torch-layout parameters (module paths as keys); x (B, S, D)."""
    B, S, _ = x.shape
    x_inner = x @ p["proj_up.weight"].T
    inner = x_inner.shape[-1] // 2
    x_mlstm, z = x_inner[..., :inner], x_inner[..., inner:]
    x_mlstm_conv_act = silu(causal_conv1d(x_mlstm, p["conv1d.conv.weight"], p["conv1d.conv.bias"]))
    q = linear_headwise(x_mlstm_conv_act, p["q_proj.weight"])
    k = linear_headwise(x_mlstm_conv_act, p["k_proj.weight"])
    v = linear_headwise(x_mlstm, p["v_proj.weight"])
    if_gate_input = np.concatenate([q, k, v], axis=-1)
    q, k, v = (np.swapaxes(a.reshape(B, S, num_heads, -1), 1, 2) for a in (q, k, v))
    igate_preact = np.swapaxes(
        if_gate_input @ p["mlstm_cell.igate.weight"].T + p["mlstm_cell.igate.bias"], -1, -2
    )
    fgate_preact = np.swapaxes(
        if_gate_input @ p["mlstm_cell.fgate.weight"].T + p["mlstm_cell.fgate.bias"], -1, -2
    )
    h_state = parallel_stabilized_simple(q, k, v, igate_preact[..., None], fgate_preact[..., None], eps=eps)
    h_state_norm = multihead_layer_norm(h_state, p["mlstm_cell.outnorm.weight"])
    h_state_norm = np.swapaxes(h_state_norm, 1, 2).reshape(B, S, -1)
    h_state = (h_state_norm + p["learnable_skip"] * x_mlstm_conv_act) * silu(z)
    return h_state @ p["proj_down.weight"].T


def mlstm_layer_step_loop(p, x, num_heads, eps=1e-6):
    """`mLSTMLayer.step` token by token from zero states (conv1d_step, `mLSTMCell.step` with the
    recurrent_step_stabilized_simple backend). Returns (ys (B, S, D), the final (c, n, m) of the cell)."""
    B, S, _ = x.shape
    inner = p["proj_up.weight"].shape[0] // 2
    DH = inner // num_heads
    conv_w = np.transpose(p["conv1d.conv.weight"][:, 0, :], (1, 0))  # "D 1 KS -> KS D"
    conv_state = np.zeros((B, conv_w.shape[0], inner))
    c = np.zeros((B, num_heads, DH, DH))
    n = np.zeros((B, num_heads, DH, 1))
    m = np.zeros((B, num_heads, 1, 1))
    ys = []
    for t in range(S):
        x_inner = x[:, t : t + 1] @ p["proj_up.weight"].T
        x_mlstm, z = x_inner[..., :inner], x_inner[..., inner:]
        x_mlstm_conv, conv_state = conv1d_step(x_mlstm, conv_state, conv_w, p["conv1d.conv.bias"])
        x_mlstm_conv_act = silu(x_mlstm_conv)
        q = linear_headwise(x_mlstm_conv_act, p["q_proj.weight"])
        k = linear_headwise(x_mlstm_conv_act, p["k_proj.weight"])
        v = linear_headwise(x_mlstm, p["v_proj.weight"])
        if_gate_input = np.concatenate([q, k, v], axis=-1)
        q, k, v = (np.swapaxes(a.reshape(B, 1, num_heads, -1), 1, 2) for a in (q, k, v))
        ig = np.swapaxes(if_gate_input @ p["mlstm_cell.igate.weight"].T + p["mlstm_cell.igate.bias"], -1, -2)
        fg = np.swapaxes(if_gate_input @ p["mlstm_cell.fgate.weight"].T + p["mlstm_cell.fgate.bias"], -1, -2)
        h_state, (c, n, m) = recurrent_step_stabilized_simple(
            c, n, m, q, k, v, ig[..., None], fg[..., None], eps
        )
        h_state_norm = multihead_layer_norm(h_state, p["mlstm_cell.outnorm.weight"])
        h_state_norm = np.swapaxes(h_state_norm, 1, 2).reshape(B, 1, -1)
        h_state = (h_state_norm + p["learnable_skip"] * x_mlstm_conv_act) * silu(z)
        ys.append(h_state @ p["proj_down.weight"].T)
    return np.concatenate(ys, axis=1), (c, n[..., 0], m[..., 0, 0])


def slstm_layer_forward(p, x, num_heads):
    """`sLSTMLayer.forward` with the vanilla `sLSTMCell` (zero initial state): the conv branch (when
    "conv1d.conv.weight" is given) feeds i and f, x feeds z and o, then the cell and the group norm.
    Note the layer's own naming: i comes from the module `fgate`, f from `igate`. The cell's parameters
    are given in their external layouts (`recurrent_kernel` (NH, DH, 4, DH), `bias` (NH, 4, DH), the
    `ParameterProxy`s), converted to the vanilla backend's internal ones as the cell does."""
    B, S, _ = x.shape
    if "conv1d.conv.weight" in p:
        x_conv = silu(causal_conv1d(x, p["conv1d.conv.weight"], p["conv1d.conv.bias"]))
    else:
        x_conv = x
    i, f, z, o = (
        linear_headwise(x_conv, p["fgate.weight"]),
        linear_headwise(x_conv, p["igate.weight"]),
        linear_headwise(x, p["zgate.weight"]),
        linear_headwise(x, p["ogate.weight"]),
    )
    cell_input = np.concatenate([i, f, z, o], axis=-1)  # (B, S, 4 H): input_shape "BSGNH"
    hidden = cell_input.shape[-1] // 4
    states = np.zeros((4, B, hidden))
    R = recurrent_kernel_ext2int(p["slstm_cell.recurrent_kernel"])
    b = bias_ext2int(p["slstm_cell.bias"])
    states_all = slstm_forward(np.swapaxes(cell_input, 0, 1), states, R, b)
    y = states_all[0][1:]  # (S, B, H)
    y = np.transpose(y.reshape(S, B, num_heads, -1), (1, 2, 0, 3))  # output_shape "BNSH"
    out = np.swapaxes(multihead_layer_norm(y, p["group_norm.weight"]), 1, 2).reshape(B, S, -1)
    return out, states_all[:, -1]
