"""The base layer under `seqjax.scan`: small helpers every layer shares (validation, dtypes, XLA plans).

It imports jax and numpy only, so `import seqjax.cells` stays light.
"""
