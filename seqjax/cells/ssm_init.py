"""Initialisers for the diagonal state space cells (S4D, S5, LRU): HiPPO matrices and their eigenbases.

Everything here runs once at `init` time on the host, in float64 NumPy, on matrices whose size is a
static hyperparameter; the cells then cast the results to `param_dtype`.

Conventions. HiPPO-LegS (Gu et al. 2020) is the real N×N matrix

    A_nk = −√(2n+1)·√(2k+1)  (n > k),   −(n+1)  (n = k),   0  (n < k);     B_n = √(2n+1).

It is not normal, but adding the rank-one term P Pᵀ with P_n = √(n + 1/2) makes it so:
S = A + P Pᵀ = −½ I + K with K skew-symmetric (Gu et al. 2022, "Efficiently modeling long sequences
with structured state spaces"). This "HiPPO-N" matrix S has eigenvalues −½ ± iω in conjugate pairs and
a unitary eigenbasis V, S = V Λ Vᴴ. S4D-LegS and S5 initialise their diagonal state matrices with Λ.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "S4D_INITS",
    "block_hippo_n",
    "hippo_legs",
    "hippo_n",
    "hippo_n_eig",
    "log_uniform",
    "s4d_modes",
]

S4D_INITS: tuple[str, ...] = ("lin", "inv", "legs")


def hippo_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The HiPPO-LegS matrices: A [n, n] and B [n], float64."""
    q = np.arange(n, dtype=np.float64)
    r = np.sqrt(2 * q + 1)
    a = -np.tril(r[:, None] * r[None, :]) + np.diag(q)
    return a, r.copy()


def hippo_n(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The normal part of HiPPO-LegS, S = A + P Pᵀ = −½ I + skew [n, n], and HiPPO's B [n], float64."""
    a, b = hippo_legs(n)
    p = np.sqrt(np.arange(n, dtype=np.float64) + 0.5)
    return a + p[:, None] * p[None, :], b


def hippo_n_eig(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition S = V diag(λ) Vᴴ of the n×n HiPPO-N matrix; complex128 λ [n], unitary V [n, n].

    The eigenvalues come sorted by imaginary part (ascending). The spectrum is symmetric, so for even n
    λ[n−1−k] = conj(λ[k]): the upper half holds exactly the modes with Im λ > 0.
    """
    s, _ = hippo_n(n)
    # S = −½ I + K with K skew-symmetric: −iK is Hermitian, so `eigh` gives a unitary V and real ω with
    # K = V diag(iω) Vᴴ. The diagonal of S is exactly −½ (checked), which becomes the real part.
    diag = np.diagonal(s)
    if not np.allclose(diag, -0.5):
        raise AssertionError("HiPPO-N: the normal part of LegS should have diagonal −1/2.")
    skew = s - np.diag(diag)
    omega, v = np.linalg.eigh(-1j * skew)
    return -0.5 + 1j * omega, v


def _upper_half(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n/2 HiPPO-N modes with Im λ > 0 and their eigenvectors: λ [n/2], V [n, n/2]."""
    lam, v = hippo_n_eig(n)
    half = n // 2
    return lam[half:], v[:, half:]


def s4d_modes(init: str, state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """S4D's diagonal A [N/2] and input vector B [N/2] (complex128) for the N = `state_size` real system.

    "lin"  (S4D-Lin):  A_n = −½ + iπn.
    "inv"  (S4D-Inv):  A_n = −½ + i (N/π) (N/(2n+1) − 1).
    "legs" (S4D-LegS): the eigenvalues of HiPPO-N with Im > 0; B is HiPPO's B in that eigenbasis, Vᴴ B.
    n = 0 … N/2 − 1; each kept mode stands for itself and its complex conjugate. B = 1 for lin and inv
    (Gu et al. 2022, "On the parameterization and initialization of diagonal state space models").
    """
    if init not in S4D_INITS:
        raise ValueError(f"S4D: unknown init {init!r}; choose one of {', '.join(S4D_INITS)}.")
    half = state_size // 2
    n = np.arange(half, dtype=np.float64)
    if init == "lin":
        return -0.5 + 1j * math.pi * n, np.ones(half, np.complex128)
    if init == "inv":
        return -0.5 + 1j * (state_size / math.pi) * (state_size / (2 * n + 1) - 1), np.ones(
            half, np.complex128
        )
    lam, v = _upper_half(state_size)
    _, b = hippo_n(state_size)
    return lam, v.conj().T @ b


def block_hippo_n(state_size: int, blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5's block-diagonal HiPPO-N initialisation with conjugate symmetry (Smith et al. 2023).

    The P = `state_size` real system is `blocks` copies of the (P/blocks)-sized HiPPO-N matrix on the
    diagonal. Each block keeps the half of its modes with Im λ > 0, so the returned pieces describe
    P/2 complex modes:

      λ    [P/2]       the kept eigenvalues, block after block.
      V    [P, P/2]    the kept eigenvectors, block-diagonal: S_block-diag = 2·Re(V diag(λ) Vᴴ).
      Vinv [P/2, P]    Vᴴ (V is unitary per block), used for B̃ = V⁻¹ B.
    """
    size = state_size // blocks
    lam, v = _upper_half(size)
    half = size // 2
    v_full = np.zeros((state_size, state_size // 2), np.complex128)
    for k in range(blocks):
        v_full[k * size : (k + 1) * size, k * half : (k + 1) * half] = v
    return np.tile(lam, blocks), v_full, v_full.conj().T


def log_uniform(
    key: jax.Array, shape: tuple[int, ...], low: float, high: float, dtype=jnp.float32
) -> jax.Array:
    """log(x) with x log-uniform in [low, high]: the log-Δ initialisation of S4, S4D and S5."""
    return jax.random.uniform(key, shape, dtype, minval=math.log(low), maxval=math.log(high))
