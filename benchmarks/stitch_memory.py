# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Peak RSS of the sliding window alone: ``FINEInferer`` (+ the bundle's float16 ``CastStitchInferer``) over a
random 512x512x200 MetaTensor with the ``tiny`` preset (random weights, windows of 64x64x32), overlap 0; prints RSS
and VmHWM in GiB.

    python -m benchmarks.stitch_memory [float16|float32]

The whole bundle pipeline (load, preprocessing, post-processing, writing) is measured by ``bench_inference``.
"""

from __future__ import annotations

import sys
import time

import torch
from monai.data import MetaTensor

from benchmarks.common import proc_status_kib
from monai_fine.inferers import CastStitchInferer, FINEInferer
from monai_fine.networks import create_fine


def _status(key: str) -> float:
    """``VmRSS`` or ``VmHWM`` in GiB."""
    return proc_status_kib(key) / 2**20


def main(dtype: str = "float16") -> None:
    net = create_fine("tiny", 1, 14, roi_size=(64, 64, 32)).eval()
    x = MetaTensor(torch.rand(1, 1, 512, 512, 200))
    print(f"input ready: RSS {_status('VmRSS'):.2f} GiB, peak {_status('VmHWM'):.2f} GiB", flush=True)
    inferer = CastStitchInferer(FINEInferer(roi_size=net.roi_size, overlap=0.0, sw_batch_size=2), dtype=dtype)
    t0 = time.time()
    with torch.no_grad():
        y = inferer(x, net)
    print(
        f"output {y.dtype} {tuple(y.shape)}: RSS {_status('VmRSS'):.2f} GiB, peak {_status('VmHWM'):.2f} GiB, "
        f"{time.time() - t0:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
