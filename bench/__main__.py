"""`python -m bench ...`: the same command line as `python cli.py ...` (the --parallel sweep's workers start this way)."""

from bench.cli import main

main()
