# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Entry point kept for existing commands: ``python benchmarks/context_ablation.py ...`` is ``python -m monai_fine context_ablation ...``.

The experiment lives in :py:mod:`monai_fine.experiments.context_ablation`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing the package

from monai_fine.experiments.context_ablation import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    main()
