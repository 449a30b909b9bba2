# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Benchmarks of monai_fine (run from the repository root: ``python -m benchmarks.bench_pipeline``; the older
scripts also run as ``python benchmarks/<name>.py``)."""
