"""The logical-axis sharding rules every task config uses (`config.logical_rules`).

rules = seqjax.train.mesh.rules_from_config(LOGICAL_RULES, mesh)  # axes the mesh lacks are dropped
"""

from __future__ import annotations

__all__ = ["LOGICAL_RULES"]

# FSDP shards the large input dimension of every weight ("embed", "vocab") over `fsdp`; tensor
# parallelism shards heads and MLP/inner widths over `model`; the batch goes over both data axes.
# Small dimensions (state sizes, gates of a recurrence, conv width) stay replicated: sharding them costs
# a collective per time step. Sequence parallelism splits the time axis of the batches and activations
# over `sequence` (a mesh axis of size > 1: the trainer then runs every cell in its sequence-parallel
# form, `seqjax.scan.sequence_parallel`; a mesh without it keeps time whole).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("gates", None),
    ("state", None),
    ("ssm_state", None),
)
