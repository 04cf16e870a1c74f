"""How one run trains: `fit` (one model trained by one method, top to bottom; start reading there),
the step loop (`loop`), the linear probe (`probe`, `logreg`), frozen-backbone features (`features`),
evaluation, the caches one owner shares across fits (`caches`, `store`), and one run from its
config (bench/run_config.py) to its record (`run`)."""
