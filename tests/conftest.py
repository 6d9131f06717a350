"""Test setup: 8 fake CPU devices (for sharding tests), set before jax is imported anywhere."""

import os
import tempfile
from collections.abc import Callable

# Tests check algorithms, not XLA's optimisation passes; at -O0 the many small programs compile ~25% faster.
from tests.driver_helpers import FAST_COMPILE_FLAGS

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE_FLAGS
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole run (JAX's own: a compiled program is found again by a
# fingerprint of its XLA module, its compile options and the backend), in a folder made here, before the
# pytest-xdist workers start and before jax is imported, so the workers, and the `scripts/train.py`
# processes the tests start, inherit it. A program compiled twice in a run (a killed run and its resume,
# the seeds of one model, a test and its rerun in another process) then compiles once. A run begins with
# an empty cache, so every program compiles at least once per run; the folder is removed at the end
# (`pytest_unconfigure`). The drivers' smoke runs keep their own (`--compilation_cache`, in their workdir).
_CACHE_MADE_HERE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_MADE_HERE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="seqjax-tests-jax-cache-"
    )
    # (a program compiled in under 0.1 s, as most eager operations are, is not worth the disk write)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

# (jax reads the environment above when it is imported)
import jax  # noqa: E402
import pytest  # noqa: E402

# Why a crashed pytest-xdist worker died, in the run's own output (tests/worker_crashes.py).
pytest_plugins = ["tests.worker_crashes"]

# XLA's own defaults for the two flags above (xla/debug_options_flags.cc), restored for one compile.
DEFAULT_OPTIMISATION = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
    "xla_cpu_use_fusion_emitters": True,
}


@pytest.fixture
def key() -> jax.Array:
    return jax.random.PRNGKey(0)


@pytest.fixture
def compile_as_users_do() -> Callable[[jax.stages.Lowered], jax.stages.Compiled]:
    """Compiles a lowered program at XLA's default optimisation level, not the suite's -O0: a check of
    the compiled program itself (its memory plan: in-place updates, temporaries) must hold for what
    users run."""

    def compile_(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
        return lowered.compile(compiler_options=DEFAULT_OPTIMISATION)

    return compile_


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    """A data folder every test of the session may prepare into and read from: under pytest-xdist the
    workers share it (the parent of their base temp folders, which is this session's), so a data set
    is prepared once per session rather than once per worker. Preparations of one data set serialise on
    its lock (`seqjax.data.preparation.preparation_lock`) and a prepared data set is read-only.
    Tests that check preparation itself use their own folders."""
    base = tmp_path_factory.getbasetemp()
    under_xdist = hasattr(request.config, "workerinput")  # a pytest-xdist worker
    root = base.parent if under_xdist else base
    folder = root / "shared_data"
    folder.mkdir(exist_ok=True)
    return str(folder)


#: A worker drops its compiled programs once it holds more memory mappings or resident memory than this
#: (checked after each test file; see `pytest_runtest_teardown`): about a third of the kernel's default
#: mapping limit, and a resident size two workers can hold on a small CI machine.
DROP_PROGRAMS_PAST_MAPPINGS = 20_000
DROP_PROGRAMS_PAST_RSS_MIB = 3_072


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After every test, forgets the runs' programs the trainer keeps (`seqjax.train.programs`). After a
    test file's last test, drops JAX's compiled programs (`jax.clear_caches`) and collects
    them, once the worker holds many (`DROP_PROGRAMS_PAST_MAPPINGS`, `DROP_PROGRAMS_PAST_RSS_MIB`).
    Each compiled XLA CPU program maps its code into the process, and a worker that keeps the programs
    of a whole run crosses the kernel's limit on mappings (`vm.max_map_count`, 65,530 by default;
    ~14,500 after 200 cell tests), and a failed mmap inside XLA is the likely cause of the segfaults
    seen late in runs, in compiling or running a program, on a different test each time (none since
    this hook). Programs are rarely shared across files. Why not after every file: the full collection
    (JAX runs a callback per collection) and the cache clearing took 87 s of CPU over a run (py-spy,
    2026-12-05), about 3% of the suite."""
    # A test starts with no run's programs kept (`seqjax.train.programs`): one that patches the code a
    # step traces must not hand its programs to the next, nor be handed an earlier test's.
    from seqjax.train.programs import drop_kept_programs
    from tests.worker_crashes import memory_mappings, resident_mib  # (a plugin: imported once registered)

    drop_kept_programs()
    if nextitem is None or nextitem.path != item.path:  # (a doctest item has a path, not a module)
        mappings = memory_mappings()  # (None without /proc: drop them, as before this check)
        small = mappings is not None and mappings < DROP_PROGRAMS_PAST_MAPPINGS
        if small and resident_mib() < DROP_PROGRAMS_PAST_RSS_MIB:
            return
        import gc

        jax.clear_caches()
        gc.collect()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Collects garbage now and freezes what is left, so pytest's own `gc.collect()` after the session
    (unraisable-exception check, in `pytest_unconfigure`) has almost nothing to walk.

    Why: under pytest-xdist a worker reports "finished" at the end of this hook; the controller then
    shuts the worker down and execnet, if the worker has not returned within 5 s, sends it a SIGINT
    (execnet.gateway_base.WorkerGateway._terminate_execution). A full collection of a session's JAX
    objects (each runs JAX's `_xla_gc_callback`) on 2 busy cores can take that long, and the SIGINT's
    KeyboardInterrupt then lands inside the gc callback: pytest reports it as a
    `PytestUnraisableExceptionWarning ... _xla_gc_callback ... KeyboardInterrupt` after a passing run.
    Collecting here, before the worker reports, moves that time before the shutdown clock starts."""
    import gc

    gc.collect()
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Removes the run's compilation cache, in the process that made it (the controller under xdist)."""
    if _CACHE_MADE_HERE is not None:
        import shutil

        shutil.rmtree(_CACHE_MADE_HERE, ignore_errors=True)
