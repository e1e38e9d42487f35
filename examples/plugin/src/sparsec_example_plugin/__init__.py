"""An example sparsec plugin package: its pass is registered through the ``sparsec.passes``
entry-point group (see ``pyproject.toml``), not by importing this package."""
