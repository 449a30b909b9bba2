# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from monai_fine.networks.nets.fine import FINE, PRESETS, create_fine

__all__ = ["FINE", "PRESETS", "create_fine"]
