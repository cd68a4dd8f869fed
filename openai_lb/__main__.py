"""Command line: ``python -m openai_lb demo|check`` (also installed as ``openai-lb``).

The commands need the ``cli`` extra (typer and rich); this module imports them only when
run, so that without the extra it can still say what to install.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

MISSING_EXTRA = 'openai-lb: the command line needs its extra; install it with: pip install "openai-lb[cli]"'
_CLI_PACKAGES = frozenset({"typer", "click", "rich"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``openai-lb`` on ``argv`` (default: the process's arguments) and return the exit status."""
    try:
        from ._cli import run
    except ImportError as error:
        # Only a missing CLI library means a missing extra; any other import error is a bug to show.
        if (error.name or "").partition(".")[0] not in _CLI_PACKAGES:
            raise
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
