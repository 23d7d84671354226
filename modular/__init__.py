"""Custom ResNet on CIFAR-10: data, transforms, LR range test, OneCycle training, evaluation, plots.

Submodules are imported where they are used, so ``python -m modular stats`` does not load torch-lr-finder or matplotlib.
"""

import os as _os

# Nothing here talks to the internet on its own: no Gradio analytics or version check, no Hugging Face
# telemetry (gradio_client sends it; huggingface_hub, which albumentations imports too, reads this once).
for _name, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    _os.environ.setdefault(_name, _value)
