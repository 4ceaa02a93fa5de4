"""Search: the backbone, width and input size that fit the user's photos and device budget.

candidates (what is tried, and its weights), config (options and budget), features (each candidate's cached
features), trial (one candidate at one fidelity), study (Optuna: results, resume, Pareto ranks), job (the
rounds of successive halving, the recommendation), result (SearchResult), output (search.json, the plot, the
recipe, --train).
"""

from edgetl.search.config import Budget, SearchConfig  # noqa: F401
from edgetl.search.job import search  # noqa: F401
from edgetl.search.result import Round, SearchResult  # noqa: F401
