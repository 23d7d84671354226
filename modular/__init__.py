"""Custom ResNet on CIFAR-10: data, transforms, LR range test, OneCycle training, evaluation, plots.

Submodules are imported where they are used, so ``python -m modular stats`` does not load torch-lr-finder or matplotlib.
"""
