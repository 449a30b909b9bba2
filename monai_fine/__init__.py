# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""monai_fine: the FINE memory-token transformer for 3D CT multi-organ segmentation, for MONAI."""

__version__ = "0.1.0"
