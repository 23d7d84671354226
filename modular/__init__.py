"""Custom ResNet on CIFAR-10, the assignment's core, what the notebook walks through: config, data,
transforms, the LR range test, the OneCycle schedule, the Learner (training and evaluation), figures.
``modular.tools`` holds what is built around it (the command line, records, the weights, Grad-CAM, the
app, the notebook's settings, synthetic data) and is never imported from here.

Importing the core leaves the environment as it was (modular/transforms.py sets albumentations' switch
against its PyPI check for that import alone).
"""
