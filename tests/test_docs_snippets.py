"""Every ```python block of the README and of docs/ runs, so none can break unnoticed.

The blocks of one markdown file run in order in one namespace (a later block may use an earlier block's
names), from the repository root. Shell blocks and plain ``` blocks are not run. A python block that cannot
run in a test (it needs an accelerator, a long training or the network) says so in its fence, with the
reason visible to whoever reads the markdown:

    ```python no-test: needs a GPU

Such a block is still compiled, so it stays valid Python. Keep these exceptions rare.

A block that needs an optional dependency (an extra of setup.cfg) names it, and is skipped, with the
blocks after it in its file, where that module is not installed:

    ```python needs: torch
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from pathlib import Path

import pytest

from seqjax.common.extras import missing_modules

ROOT = Path(__file__).resolve().parent.parent
#: The markdown files whose python blocks run (those that exist).
_CANDIDATES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "configs" / "README.md",
    ROOT / "experiments" / "README.md",
]
DOC_FILES = [p.relative_to(ROOT).as_posix() for p in _CANDIDATES if p.exists()]

_OPEN = re.compile(r"^(?P<indent> *)```(?P<info>\S.*)?$")
_NO_TEST = re.compile(r"^no-test(?::\s*(?P<reason>.*\S))?\s*$")
_NEEDS = re.compile(r"^needs:\s*(?P<modules>[\w.]+(?:\s*,\s*[\w.]+)*)\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: str
    line: int  # the first line of code (1-based), right after the opening fence
    source: str
    #: why the block is not run ("" when it runs); None when the fence says no-test without a reason
    skip: str | None
    #: the optional modules the block imports (fence `python needs: torch`); it runs only where they are
    needs: tuple[str, ...] = ()


def python_blocks(path: str) -> list[Block]:
    """The ```python blocks of a markdown file, dedented by their fence's indentation (list items)."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, info = opening["indent"], (opening["info"] or "").strip()
        close = re.compile(rf"^{indent}```\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        language, _, rest = info.partition(" ")
        if language == "python":
            body = [
                line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : j]
            ]
            skip: str | None = ""
            needs: tuple[str, ...] = ()
            if rest.strip():
                marker, needed = _NO_TEST.match(rest.strip()), _NEEDS.match(rest.strip())
                if marker is None and needed is None:
                    raise ValueError(
                        f"{path}:{i + 1}: unknown fence info {info!r}; use `python no-test: <reason>` "
                        "or `python needs: <module>[, <module>]`"
                    )
                if marker is not None:
                    skip = marker["reason"]
                else:
                    needs = tuple(name.strip() for name in needed["modules"].split(","))
            blocks.append(Block(path, i + 2, "\n".join(body) + "\n", skip, needs))
        i = j + 1
    return blocks


def _compiled(block: Block):
    # Leading blank lines put tracebacks on the markdown file's own line numbers.
    return compile("\n" * (block.line - 1) + block.source, block.path, "exec")


FILES_WITH_CODE = [path for path in DOC_FILES if python_blocks(path)]


def test_the_documentation_has_python_blocks():
    assert "README.md" in FILES_WITH_CODE and any(p.startswith("docs/") for p in FILES_WITH_CODE)


@pytest.mark.parametrize("path", DOC_FILES)
def test_blocks_not_run_say_why_and_compile(path):
    for block in python_blocks(path):
        assert block.skip is not None, (
            f"{path}:{block.line - 1}: `no-test` needs a reason: `python no-test: why`"
        )
        _compiled(block)  # a SyntaxError names the file and line


@pytest.mark.parametrize("path", FILES_WITH_CODE)
def test_python_blocks_run(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": f"docs_snippet_{Path(path).stem}"}
    for block in python_blocks(path):
        if block.skip:
            continue
        missing = missing_modules(*block.needs)
        if missing:  # the later blocks may use this one's names, so they stop here too
            pytest.skip(
                f"the python block at {path}:{block.line - 1} needs {', '.join(missing)}, which is not "
                "installed here (an extra of setup.cfg); the blocks before it ran"
            )
        error = None
        try:
            exec(_compiled(block), namespace)
        except Exception:
            error = traceback.format_exc()
        if error is not None:
            pytest.fail(f"the python block at {path}:{block.line - 1} fails:\n{error}", pytrace=False)
