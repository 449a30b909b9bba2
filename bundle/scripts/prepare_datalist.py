# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
"""Write ``dataset_0.json`` for a folder of BTCV-style images and labels.

    python bundle/scripts/prepare_datalist.py --data_dir /data/btcv            # pairs imagesTr/ with labelsTr/
    python bundle/scripts/prepare_datalist.py --data_dir /data/btcv --paper_split   # the FINE/nnFormer 18/12 split

Same as ``python -m monai_fine datalist``; this file only forwards to ``monai_fine.data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from monai_fine.data import btcv_18_12_datalist, datalist


def main(data_dir: str, output: str | None = None, paper_split: bool = False, **kwargs) -> str:
    """Build the datalist of ``data_dir`` (or copy the paper's 18/12 BTCV split into it)."""
    if not paper_split:
        return datalist(data_dir, output=output, **kwargs)
    out = Path(output or Path(data_dir) / "dataset_0.json")
    out.write_text(json.dumps(btcv_18_12_datalist(), indent=2))
    return str(out)


if __name__ == "__main__":
    fire.Fire(main)
