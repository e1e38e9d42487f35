"""The ``sparsec`` console script: signal handling first, then the command line.

Invariant: from the moment ``main`` starts, SIGINT and SIGTERM unwind the stack as an exception
(so every ``finally`` runs and temp files go) and end the process with exactly one stderr line,
``sparsec: aborted``, and exit code 130 (SIGINT) or 143 (SIGTERM); never a traceback. Further
signals while it unwinds are ignored, so cleanup finishes (SIGKILL still stops it). A signal the
process inherited as ignored (``nohup``, a background job) stays ignored.

This module imports only the standard library, and ``import sparsec`` is lazy, so the handlers are
in place before ``sparsec.cli`` loads onnx, onnxruntime and numpy (seconds). In-process callers
use ``sparsec.cli.main``, which leaves the process's signal handling alone.
"""

from __future__ import annotations

import signal
import sys

EXIT_CODES = {
    signal.SIGINT: 130,
    signal.SIGTERM: 143,
}  # 128 + the signal's number, as shells report it
_state = {"stopping": False}


class Interrupted(BaseException):
    """A signal arrived. Not an ``Exception``: no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    """Run ``sparsec`` with signal handling installed first; return the exit code."""
    _install_handlers()
    try:
        from sparsec import cli

        return cli.main(argv)
    except Interrupted as stop:
        return aborted(stop.signum)
    except KeyboardInterrupt:  # raised by code, not by our handler
        return aborted(signal.SIGINT)
    finally:
        _state["stopping"] = True  # a signal from here to the exit changes nothing: ignore it


def _install_handlers() -> None:
    _state["stopping"] = False
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def _on_signal(signum: int, _frame) -> None:
    if _state["stopping"]:
        return
    _state["stopping"] = True
    raise Interrupted(signum)


def aborted(signum: int) -> int:
    """Say ``sparsec: aborted`` once on stderr; the exit code of ``signum``."""
    _state["stopping"] = True
    try:
        sys.stderr.write("sparsec: aborted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or a broken pipe: the exit code still says it
        pass
    return EXIT_CODES[signum]


if __name__ == "__main__":
    sys.exit(main())
