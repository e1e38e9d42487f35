"""Build the API reference from the docstrings: ``python docs/api.py [OUT_DIR]`` (default
``build/api``; needs ``pip install ".[docs]"``), then open ``OUT_DIR/index.html``.

``PUBLIC_MODULES`` is the public API: every name in their ``__all__`` is documented (a test,
``tests/test_api_reference.py``, fails on one without a docstring, and on a public method of a
public class without one).
"""

from __future__ import annotations

import sys
from pathlib import Path

PUBLIC_MODULES = [
    "sparsec",
    "sparsec.api",
    "sparsec.passes",
    "sparsec.testing",
    "sparsec.errors",
]


def build(out: Path) -> Path:
    """Write the HTML reference of ``PUBLIC_MODULES`` into ``out``; return its index page."""
    import pdoc  # the [docs] extra

    pdoc.render.configure(docformat="google", footer_text="sparsec API reference")
    pdoc.pdoc(*PUBLIC_MODULES, output_directory=out)
    return out / "index.html"


if __name__ == "__main__":
    index = build(Path(sys.argv[1] if len(sys.argv) > 1 else "build/api"))
    print(f"API reference written: {index}")
