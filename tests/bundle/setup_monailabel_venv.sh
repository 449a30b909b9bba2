#!/usr/bin/env bash
# Copyright (c) monai_fine contributors. Licensed under the Apache License, Version 2.0.
# A MONAI Label 0.8.5 venv on MONAI 1.6.1 with the CPU torch, for tests/bundle/test_monailabel.py (outside the repo).
#   bash tests/bundle/setup_monailabel_venv.sh /work/venvs/monailabel
#   export MONAI_FINE_MONAILABEL_PYTHON=/work/venvs/monailabel/bin/python
# TORCH_SPEC (default torch==2.13.0) selects torch; pip must find its CPU build (e.g. --index-url of the CPU wheels).
set -euo pipefail
VENV=${1:?usage: setup_monailabel_venv.sh VENV_DIR}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" "$TORCH_SPEC"
# monailabel's own requirements minus sam2 (an optional 2D/3D click model with a CUDA torchvision; off with
# --conf sam2 false); pydicom 2.x, dicomweb-client 0.59 and pynetdicom 2.0 because pydicom-seg needs pydicom < 3.
"${PIP[@]}" "$TORCH_SPEC" "monai[fire,ignite,nibabel,itk,skimage,tqdm,psutil]==1.6.1" "pytorch-ignite==0.5.5" \
  uvicorn pydantic pydantic-settings python-dotenv fastapi python-multipart httpx schedule timeloop expiringdict \
  expiring_dict cachetools watchdog "pydicom==2.4.4" pydicom-seg "pynetdicom==2.0.2" "dicomweb-client==0.59.1" pynrrd \
  girder-client einops pyyaml filelock passlib pyjwt bcrypt shapely requests requests-toolbelt urllib3 scikit-learn \
  scipy google-auth ninja numpymaxflow pillow "torchvision==0.28.0"
"${PIP[@]}" --no-deps "monailabel==0.8.5"
# PyPI's torchvision is linked against CUDA torch: with the CPU torch its compiled ops cannot load and
# `import torchvision` fails ("operator torchvision::nms does not exist"). MONAI Label only needs
# torchvision.utils.make_grid/save_image (pure Python): skip the op registrations when the ops are absent.
# Not needed with a CUDA torch.
TV=$("$VENV/bin/python" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")
if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  for m in _meta_registrations _autograd_registrations; do
    mv "$TV/$m.py" "$TV/${m}_ops.py"
    printf 'from torchvision.extension import _has_ops\n\nif _has_ops():\n    from torchvision.%s_ops import *  # noqa: F401,F403\n' "$m" > "$TV/$m.py"
  done
  mv "$TV/_C.so" "$TV/_C.so.cuda" 2>/dev/null || true
fi
"$VENV/bin/python" -c "import monailabel, monai, torch, torchvision.utils; print('monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
