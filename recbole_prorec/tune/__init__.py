"""Ray Tune hyper-parameter searches over any model, chosen on validation; only the best configuration is tested.

    python -m recbole_prorec.tune --model=SASRec --dataset=ml-100k --num_samples=8 --max_epochs=10

One concern per module: `space` (search-space files), `plan` (settings, the resolved plan, the scheduler),
`trial` (what runs in Ray's workers), `search` (the driver), `tables` (results and the best config) and
`__main__` (the CLI, whose `--help` documents the search).
"""

from recbole_prorec.tune.plan import SearchPlan, SearchSettings, build_scheduler, plan_search
from recbole_prorec.tune.search import evaluate_best, search
from recbole_prorec.tune.space import DISTRIBUTIONS, SearchSpaceError, load_search_space, sampled_keys
from recbole_prorec.tune.tables import TEST_LABEL, SearchResult, best_row, collect_rows

__all__ = [
    "DISTRIBUTIONS",
    "TEST_LABEL",
    "SearchPlan",
    "SearchResult",
    "SearchSettings",
    "SearchSpaceError",
    "best_row",
    "build_scheduler",
    "collect_rows",
    "evaluate_best",
    "load_search_space",
    "plan_search",
    "sampled_keys",
    "search",
]
