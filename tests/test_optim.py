# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import pytest
import torch

from monai_fine.optim import create_optimizer


def test_paper_sgd_and_adamw():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = create_optimizer("sgd", params, 0.01)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    assert isinstance(create_optimizer("adamw", params, 2e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer_name must be one of.*'adam'"):
        create_optimizer("adam", params, 1e-3)
