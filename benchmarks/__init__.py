# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Benchmarks of monai_fine. Each runs from the repository root as ``python -m benchmarks.<name>`` (see
``benchmarks/README.md``); :py:mod:`benchmarks.common` holds what several of them share."""
