"""The base layer under `seqjax.scan`: small helpers every layer shares (validation, dtypes, XLA plans).

It imports jax and numpy only, so `import seqjax.cells` stays light. `extras` lists the optional modules of
the subpackages above the cells; its `require` is the ImportError that names the extra to install.
"""
