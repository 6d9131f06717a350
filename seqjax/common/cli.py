"""Scripts' refusals: an error that names the thing and the fix is printed alone, not as a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["command_without", "run_or_refuse"]


def run_or_refuse(
    script: str,
    main: Callable[[list[str]], None],
    argv: list[str],
    refusals: Callable[[], tuple[type[Exception], ...]],
) -> None:
    """Runs `main(argv)`. An exception of a type in `refusals()` is the script refusing its input (a
    config value, a workdir, a file) with a message that already names it and the fix: it is printed
    alone on stderr as `<script>: <message>` and the process exits with status 2 (a usage error), where
    a traceback would bury it. `refusals` is called only when an exception is raised, so a script can name
    classes from modules that `main` imports itself (e.g. after `jax.distributed.initialize`). Any other
    exception propagates unchanged.

        >>> def main(argv):
        ...     raise ValueError("config.total_steps: -5 is not allowed; set it to a value >= 1.")
        >>> run_or_refuse("scripts/x.py", main, [], lambda: (ValueError,))
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    try:
        main(argv)
    except Exception as error:
        if not isinstance(error, refusals()):
            raise
        print(f"{script}: {error}", file=sys.stderr)
        sys.exit(2)


def command_without(argv: list[str], flag: str) -> list[str]:
    """`argv` less the string flag `flag` in either of absl's forms (`--flag=value`, `--flag value`, one
    dash or two): for a command line recorded beside a value that is kept on its own (a run's --note).

        >>> command_without(["run.py", "--note", "quiet", "--n=1", "--note=again"], "note")
        ['run.py', '--n=1']
    """
    names = (f"--{flag}", f"-{flag}")
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept
