# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Glue for the bundle; model code lives in the ``monai_fine`` package."""
