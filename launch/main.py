"""Launcher: `python launch/main.py --config configs/<file>.py --workdir <dir> [--config.field=value ...]`.

The launch itself lives in the package (`distill_jax.launcher`), so that `distill-jax run`
does the same from a pip install; this file only makes the checkout importable.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill_jax.launcher import main  # noqa: E402

if __name__ == "__main__":
    main()
