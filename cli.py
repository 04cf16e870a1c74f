"""sft-bench command line: `python cli.py COMMAND ...` (or `python -m bench COMMAND ...`).

python cli.py backbones
python cli.py run --backbone efficientnet_lite0 --method sft --fraction 0.1 --resolution 64
python cli.py sweep --config experiments/quick.toml

The commands live in bench/cli/; this file is the entry point the README names.
"""

from __future__ import annotations

from bench.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
