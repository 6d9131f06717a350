"""Trainer numbers: step time and tokens/s on 1 device vs meshes of N (fake CPU) devices, checkpoint save
and restore time, and what an async save costs the steps that run while it writes.

    python scripts/benchmark_trainer.py                       # -> benchmarks/trainer_<platform>.md
    python scripts/benchmark_trainer.py --preset=gla --length=1024 --d_model=128

On CPU it fakes 8 devices (XLA_FLAGS) before jax is imported; the fake devices share the same cores,
so a bigger CPU mesh measures sharding overhead, not speed-up.
"""

from __future__ import annotations

import os
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

flags.DEFINE_string("preset", "lstm", "Mixer preset (seqjax.config.PRESETS).")
flags.DEFINE_integer("length", 512, "Tokens per sequence.")
flags.DEFINE_integer("batch_size", 16, "Global batch.")
flags.DEFINE_integer("d_model", 128, "Model width.")
flags.DEFINE_integer("num_layers", 2, "Blocks.")
flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after one compiling step).")
flags.DEFINE_string("out", "benchmarks/trainer_{platform}.md", "Markdown output.")
FLAGS = flags.FLAGS

MESHES = [
    ((1,), ("data",), 1),
    ((8,), ("data",), 8),
    ((4, 2), ("data", "model"), 8),
    ((2, 2, 2), ("data", "fsdp", "model"), 8),
]


def _config(shape, axes, devices):
    from seqjax.config import load_config_file

    c = load_config_file(
        os.path.join(ROOT, "configs", "synthetic.py"), f"{FLAGS.preset},length={FLAGS.length}"
    )
    c.batch_size = FLAGS.batch_size
    c.model.d_model = FLAGS.d_model
    c.model.num_layers = FLAGS.num_layers
    c.mesh.shape, c.mesh.axes, c.mesh.num_devices = shape, axes, devices
    return c


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main(argv: list[str]) -> None:
    del argv
    import jax

    from seqjax.data.pipeline import TrainBatches
    from seqjax.train.checkpoint import Checkpoints
    from seqjax.train.state import init_train_state
    from seqjax.train.step import LOSSES, make_train_step
    from seqjax.train.trainer import _global_batch, setup

    rows, ckpt_rows = [], []
    tokens = FLAGS.batch_size * FLAGS.length
    for shape, axes, devices in MESHES:
        config = _config(shape, axes, devices)
        parts = setup(config)
        state, shardings = init_train_state(
            parts["model"], parts["tx"], parts["example"], parts["mesh"], parts["rules"], seed=0
        )
        step = make_train_step(parts["model"], parts["tx"], LOSSES["lm"], shardings, parts["batch_shardings"])
        batches = TrainBatches(parts["sources"]["train"], FLAGS.batch_size)
        data = [_global_batch(next(batches), parts["batch_shardings"]) for _ in range(FLAGS.steps + 1)]
        batches.close()
        state, m = step(state, data[0])
        jax.block_until_ready(m)
        times = []
        for b in data[1:]:
            t = time.perf_counter()
            state, m = step(state, b)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        rows.append((shape, axes, devices, _median(times)))
        if devices == 8 and len(shape) == 3:  # checkpoint timings on the FSDP mesh
            nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
            with tempfile.TemporaryDirectory() as d:
                sync = Checkpoints(os.path.join(d, "sync"), async_save=False)
                t = time.perf_counter()
                sync.save(1, state)
                save_s = time.perf_counter() - t
                t = time.perf_counter()
                restored = sync.restore(parts["abstract_state"])
                jax.block_until_ready(restored.state)
                restore_s = time.perf_counter() - t
                sync.close()
                background = Checkpoints(os.path.join(d, "async"), async_save=True)
                t = time.perf_counter()
                background.save(1, state)
                blocking_s = time.perf_counter() - t
                during = []
                for b in data[1:]:
                    t = time.perf_counter()
                    state, m = step(state, b)
                    jax.block_until_ready(m)
                    during.append(time.perf_counter() - t)
                background.close()
            ckpt_rows.append((nbytes, save_s, restore_s, blocking_s, _median(during), _median(times)))

    platform = jax.devices()[0].platform
    lines = [
        f"# Trainer: step time by mesh, checkpoint cost ({platform})",
        "",
        f"`python scripts/benchmark_trainer.py --preset={FLAGS.preset} --length={FLAGS.length} "
        f"--batch_size={FLAGS.batch_size} --d_model={FLAGS.d_model} --num_layers={FLAGS.num_layers}`: a "
        f"{FLAGS.preset} language model on synthetic data, AdamW, medians of {FLAGS.steps} steps after the "
        f"compiling one. CPU devices are fake (one host's cores shared), so more of them measures the cost "
        f"of sharding, not a speed-up.",
        "",
        "| mesh | axes | devices | step time | tokens/s |",
        "|---|---|---:|---:|---:|",
    ]
    for shape, axes, devices, t in rows:
        lines.append(
            f"| {'x'.join(map(str, shape))} | {', '.join(axes)} | {devices} | {t * 1e3:.1f} ms "
            f"| {tokens / t:,.0f} |"
        )
    if ckpt_rows:
        nbytes, save_s, restore_s, blocking_s, during, plain = ckpt_rows[0]
        lines += [
            "",
            f"Checkpoint of the whole train state ({nbytes / 2**20:.1f} MiB, 2x2x2 mesh, Orbax):",
            "",
            "| measurement | time |",
            "|---|---:|",
            f"| synchronous save | {save_s * 1e3:.0f} ms |",
            f"| restore onto the mesh | {restore_s * 1e3:.0f} ms |",
            f"| async save, blocking part | {blocking_s * 1e3:.0f} ms |",
            f"| step time while the async save writes | {during * 1e3:.1f} ms (vs {plain * 1e3:.1f} ms) |",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.path.join(ROOT, FLAGS.out.format(platform=platform))
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    app.run(main)
