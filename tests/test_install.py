"""The light install: the core needs jax and numpy only, every other dependency comes with an extra of
setup.cfg named for what it enables, `import seqjax` loads no heavy library, the subpackages above the
cells load on first access, and a subpackage whose extra is missing says which extra to install.

The import checks run in fresh interpreters (the test process has every subpackage loaded already);
the missing dependencies are simulated with an import hook that refuses them.
"""

from __future__ import annotations

import ast
import configparser
import importlib.abc
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from seqjax.common import extras

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "seqjax"

#: Libraries that `import seqjax` (cells and scan) must not load; asserted only for those that
#: `import jax` itself does not load (jax imports etils, for one, where it is installed).
HEAVY = (
    "absl",
    "flax",
    "grain",
    "matplotlib",
    "ml_collections",
    "optax",
    "orbax",
    "pandas",
    "scipy",
    "sklearn",
    "tensorboardX",
    "tensorflow",
    "tensorflow_datasets",
    "tokenizers",
    "torch",
)

#: Distribution name -> top-level module, where they differ beyond "-" -> "_" (setup.cfg's names).
DIST_TO_MODULE = {
    "absl-py": "absl",
    "ml-collections": "ml_collections",
    "orbax-checkpoint": "orbax",
    "pytest-xdist": "xdist",
    "scikit-learn": "sklearn",
    "tensorflow-datasets": "tensorflow_datasets",
}

#: Extra -> the extras whose requirements it repeats (setup.cfg cannot name another extra portably).
CONTAINS = {
    "train": ("models", "data"),
    "experiments": ("train",),
    "notebook": ("experiments",),
    "all": ("notebook", "torch"),
    "test": ("all",),
}


def _run(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter from the repository root (so this checkout's seqjax loads)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _requirement_name(line: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line.strip())
    assert match, f"setup.cfg: cannot read the requirement {line!r}"
    return match.group(0)


def _setup_cfg() -> tuple[set[str], dict[str, set[str]]]:
    """(core requirement names, {extra: requirement names}) from setup.cfg."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")

    def names(value: str) -> set[str]:
        return {_requirement_name(line) for line in value.splitlines() if line.strip()}

    core = names(parser["options"]["install_requires"])
    extras_require = {extra: names(value) for extra, value in parser["options.extras_require"].items()}
    return core, extras_require


def _module(distribution: str) -> str:
    return DIST_TO_MODULE.get(distribution, distribution.replace("-", "_"))


def _third_party_imports(files: list[Path]) -> set[str]:
    """The top-level modules imported anywhere in `files` (also inside functions), less the standard
    library and seqjax itself."""
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"seqjax", "__future__"}


def _required_extras() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{subpackage: (extra, modules)} from the `require(__name__, "extra", *MODULES)` call of each
    subpackage's __init__.py (read with ast, so the test checks what the code does)."""
    found = {}
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        for node in ast.parse(init.read_text(encoding="utf-8")).body:
            call = node.value if isinstance(node, ast.Expr) else None
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "require":
                extra = call.args[1].value
                starred = call.args[2:]  # *MODULES: names of seqjax.common.extras
                modules = tuple(m for arg in starred for m in getattr(extras, arg.value.id))
                found[init.parent.name] = (extra, modules)
    return found


# --- the light import and the lazy subpackages ------------------------------------------------------------


@pytest.fixture(scope="module")
def light_import() -> dict:
    """One fresh interpreter: what `import seqjax; import seqjax.cells; seqjax.scan` loads beyond jax,
    then what the lazy attribute `seqjax.models` gives."""
    done = _run(
        f"""
        import json, sys
        import jax
        before = {{m.split(".")[0] for m in sys.modules}}
        import seqjax
        import seqjax.cells
        seqjax.scan
        after = {{m.split(".")[0] for m in sys.modules}}
        loaded = sorted(m for m in {HEAVY!r} if m in after and m not in before)
        subpackages_loaded = sorted(m for m in sys.modules if m.startswith("seqjax.")
                                    and m.split(".")[1] in seqjax.LAZY_SUBPACKAGES)
        listed = sorted(name for name in seqjax.LAZY_SUBPACKAGES if name in dir(seqjax))
        models = seqjax.models
        try:
            seqjax.no_such_subpackage
            missing = "no error"
        except AttributeError as error:
            missing = str(error)
        print(json.dumps({{
            "loaded": loaded,
            "subpackages_loaded": subpackages_loaded,
            "listed": listed,
            "models_is_module": models is sys.modules["seqjax.models"],
            "language_model": models.LanguageModel.__module__,
            "missing": missing,
        }}))
        """
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_seqjax_loads_no_heavy_library(light_import):
    """`import seqjax`, `seqjax.cells` and `seqjax.scan` need jax only: no flax, optax, orbax, TFDS, grain,
    pandas, tokenizers, scipy, sklearn, torch, ... and none of the subpackages above the cells."""
    assert light_import["loaded"] == [], f"import seqjax loaded {light_import['loaded']}"
    assert light_import["subpackages_loaded"] == []


def test_subpackages_load_on_attribute_access(light_import):
    assert light_import["models_is_module"]
    assert light_import["language_model"] == "seqjax.models.tasks"
    assert light_import["listed"] == sorted(_required_extras())  # in dir(seqjax) before they load
    assert "no_such_subpackage" in light_import["missing"]


# --- a missing dependency names its extra -------------------------------------------------------------

#: (what is imported, the dependency refused, the extra the message must name). The refused modules are
#: ones `import jax` does not load (a loaded module is found in sys.modules, past any import hook).
BLOCKED_CASES = [
    ("seqjax.models", "flax", "models"),
    ("seqjax.data", "tensorflow_datasets", "data"),
    ("seqjax.data", "tokenizers", "data"),
    ("seqjax.train", "optax", "train"),
    ("seqjax.train", "orbax", "train"),
    ("seqjax.train", "flax", "train"),
    ("seqjax.config", "ml_collections", "train"),
    ("seqjax.baselines", "sklearn", "experiments"),
    ("seqjax.experiment", "scipy", "experiments"),
    ("attribute seqjax.models", "flax", "models"),
]


@pytest.fixture(scope="module")
def blocked_imports() -> dict[str, str]:
    """One fresh interpreter that imports each case's subpackage with its dependency refused by an import
    hook placed first on sys.meta_path: {case: the ImportError's message, or what went wrong}."""
    done = _run(
        f"""
        import importlib, json, sys

        class Refuse:
            blocked = set()

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.blocked:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (refused by the test)", name=name)
                return None

        refuse = Refuse()
        sys.meta_path.insert(0, refuse)
        import seqjax

        results = {{}}
        for target, module, extra in {BLOCKED_CASES!r}:
            refuse.blocked = {{module}}
            key = f"{{target}} without {{module}}"
            already = module in sys.modules  # e.g. the orbax namespace, imported to look for orbax.checkpoint
            try:
                if target.startswith("attribute "):
                    getattr(seqjax, target.rsplit(".", 1)[1])
                else:
                    importlib.import_module(target)
                results[key] = "no ImportError"
            except ImportError as error:
                results[key] = f"{{type(error).__name__}}: {{error}}"
            if module in sys.modules and not already:
                results[key] += f" (and {{module}} was imported)"
        print(json.dumps(results))
        """
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("target", "module", "extra"), BLOCKED_CASES)
def test_missing_dependency_names_the_extra(blocked_imports, target, module, extra):
    message = blocked_imports[f"{target} without {module}"]
    subpackage = target.removeprefix("attribute ")
    assert message.startswith(f"ModuleNotFoundError: {subpackage} needs "), message
    assert f"pip install 'seqjax[{extra}]'" in message, message
    assert module in message and "(and" not in message, message


def test_require_names_every_missing_module(monkeypatch):
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in ("refused_a", "refused_b"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    extras.require("seqjax.demo", "models", "json", "numpy")  # present: no error
    with pytest.raises(ModuleNotFoundError) as raised:
        extras.require("seqjax.demo", "train", "json", "refused_a", "refused_b", "no_such_module_at_all")
    assert str(raised.value).startswith(
        "seqjax.demo needs refused_a, refused_b and no_such_module_at_all, which are not installed: "
        "pip install 'seqjax[train]'"
    )
    assert raised.value.name == "refused_a"


def test_plots_without_matplotlib_name_the_extra(monkeypatch):
    plots = pytest.importorskip("seqjax.experiment.plots")

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "matplotlib":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    with pytest.raises(ImportError, match=re.escape("pip install 'seqjax[experiments]'")):
        plots.learning_curves({}, ROOT / "no-such-file.png")


# --- setup.cfg --------------------------------------------------------------------------------------------


def test_core_install_is_jax_and_numpy():
    core, _ = _setup_cfg()
    assert core == {"jax", "numpy"}


def test_larger_extras_contain_the_smaller_ones():
    _, extras_require = _setup_cfg()
    assert set(CONTAINS) | {"models", "data", "torch"} == set(extras_require)
    for extra, parts in CONTAINS.items():
        for part in parts:
            assert extras_require[part] <= extras_require[extra], (
                f"setup.cfg: extra {extra!r} lacks {sorted(extras_require[part] - extras_require[extra])} "
                f"of {part!r}"
            )
    assert {"tensorboard", "psutil"} <= extras_require["train"]  # `tensorboard --logdir`, benchmarks
    assert {"ipykernel", "nbclient", "nbformat", "matplotlib"} <= extras_require["notebook"]


def test_every_third_party_import_comes_with_an_extra():
    """Every module imported anywhere under seqjax/ is a core requirement or in some extra."""
    core, extras_require = _setup_cfg()
    provided = {_module(d) for d in core} | {_module(d) for ds in extras_require.values() for d in ds}
    imported = _third_party_imports(sorted(PACKAGE.rglob("*.py")))
    assert imported, "found no imports under seqjax/"
    assert imported <= provided, f"imported by seqjax but in no extra: {sorted(imported - provided)}"


def test_each_subpackage_requires_what_it_imports_from_its_extra():
    """The modules a subpackage imports are core or checked by its `require` call (so the message comes
    before any traceback), and its extra installs every module that call checks (so the fix works).
    cells, scan and common import nothing beyond the core."""
    core, extras_require = _setup_cfg()
    core_modules = {_module(d) for d in core}
    required = _required_extras()
    assert set(required) == {"baselines", "config", "data", "experiment", "models", "train"}
    for subpackage in sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        imported = _third_party_imports(sorted((PACKAGE / subpackage).rglob("*.py")))
        extra, modules = required.get(subpackage, ("", ()))
        checked = {m.split(".")[0] for m in modules}
        # plots.py checks matplotlib itself, on first use (the protocol's numbers need no plotting);
        # online/loop.py checks the train extra itself (the online learners need only jax)
        lazily_checked = {"experiment": {"matplotlib"}, "online": {"optax"}}.get(subpackage, set())
        assert imported <= core_modules | checked | lazily_checked, (
            f"seqjax.{subpackage} imports {sorted(imported - core_modules - checked - lazily_checked)} "
            "without checking them in its require call"
        )
        if extra:
            installed = {_module(d) for d in extras_require[extra]}
            assert checked | lazily_checked <= installed, (
                f"seqjax.{subpackage}'s message says seqjax[{extra}], which lacks "
                f"{sorted(checked | lazily_checked - installed)}"
            )
