"""How users spell methods and recipes: `--method sft --branch mlp` is the entry `sft-mlp`, and the
old names of the article's recipe and model. Torch-free: the CLI, an experiment file's validation,
a run's config and the report's readers of old runs tables all resolve names here, in one place.
"""

from __future__ import annotations

from bench.registry import UserError, renamed

# The recipes a run can have: `tuned` (searched hyperparameters), `defaults` (protocol v3: each
# method's defaults, no search; beside `tuned` it shows what the search added) and `article` (the
# article's fixed recipe, bench/models/hparams.py's ARTICLE_RECIPE).
RECIPES = ("tuned", "defaults", "article")

# The one compatibility shim for the old names (2026-12-06): the article's recipe was called `seed`
# (which also names the random seed) and its model `seed_sft`. Commands, experiment files and runs.csv
# tables written before the rename (results/ of past studies, tests/test_report.py's old tables) still
# say them, so they are read as `article` / `article_sft` with a RenamedWarning. Remove after 2027-06-30,
# once no kept results folder predates the rename (check: grep -r ',seed_sft,\|recipe = "seed"' results).
RECIPE_ALIASES = {"seed": "article"}
METHOD_ALIASES = {"seed_sft": "article_sft"}  # the article's model, named after its recipe


def recipe_name(recipe: str) -> str:
    """The recipe's current name: `seed` -> `article` (with a FutureWarning saying so), others as given."""
    new = RECIPE_ALIASES.get(recipe)
    if new is None:
        return recipe
    renamed("recipe", recipe, new)
    return new


def method_name(method: str, branch: str | None) -> str:
    """`--method sft --branch mlp` (or `{ name = "sft", branch = "mlp" }`) is the registry entry `sft-mlp`."""
    if branch in (None, "", "linear"):
        return method
    if method != "sft":
        raise UserError(f"--branch applies to sft only, not '{method}'")
    if branch not in ("mlp", "side"):
        raise UserError(f"branch '{branch}' is not one of: linear, mlp, side")
    return f"sft-{branch}"
