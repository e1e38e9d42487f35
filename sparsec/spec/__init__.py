"""A compression job's specification, from flags, recipe keys or the Python API: the options
as data (``options``), the spec and its rules (``job``, ``rules``), recipes (``recipe``)."""

from sparsec.spec.job import JobSpec
from sparsec.spec.options import OPTION_BY_NAME, OPTIONS, Option
from sparsec.spec.recipe import load_recipe, recipe_text

__all__ = ["OPTIONS", "OPTION_BY_NAME", "JobSpec", "Option", "load_recipe", "recipe_text"]
