"""The trainer: meshes and logical sharding rules, optimizers with parameter groups (more to come)."""

from seqjax.train.mesh import DEFAULT_LOGICAL_RULES, make_mesh, named_sharding, rules_from_config, spec_for
from seqjax.train.optimizer import make_optimizer, make_schedule

__all__ = [
    "DEFAULT_LOGICAL_RULES",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "named_sharding",
    "rules_from_config",
    "spec_for",
]
