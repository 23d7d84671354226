"""Custom ResNet on CIFAR-10, the assignment's core: config, data, transforms, the LR range test, the
OneCycle schedule, the Learner (training and evaluation), plots. ``modular.tools`` holds what is built
around it (the command line, records, the app) and is never imported from here.
"""

import os as _os

# Nothing here talks to the internet on its own: no Gradio analytics or version check, no Hugging Face
# telemetry (gradio_client sends it; huggingface_hub, which albumentations imports too, reads this once).
for _name, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    _os.environ.setdefault(_name, _value)
