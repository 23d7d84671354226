#!/usr/bin/env bash
# The committed notebook's outputs made by a real run: the notebook executed in full mode (range test, 24
# epochs, evaluation, Grad-CAM) on a local copy of CIFAR-10, saved in place, then the run's record and figures.
#
#   CIFAR10_DIR=/tmp/cifar10-official tools/execute_notebook.sh
#
# About as long as `python -m modular train` (1.5-2.2 h on a 2-core bf16 CPU). The run folder ($ERA_OUTPUT_DIR,
# default runs/notebook) gets a checkpoint after every epoch: if this stops, run it again and the training cell
# continues from the last finished epoch (its saved output then says so). Afterwards the notebook shows that run,
# and runs/notebook/run.json is its record (commit it to results/ with the notebook). Keep ERA_OUTPUT_DIR
# relative (the configuration cell prints it, and saved outputs name no local path: tests/test_docs.py);
# CIFAR10_DIR may be anywhere (the outputs name the data by what it is, not where), outside the clone, which
# stays clean so that the record's commit says so.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CIFAR10_DIR:?set CIFAR10_DIR to a local copy of CIFAR-10 (the official pixels: ../shared/data/get-cifar10-official)}"
export ERA_OUTPUT_DIR=${ERA_OUTPUT_DIR:-runs/notebook} NO_ALBUMENTATIONS_UPDATE=1
unset ERA_QUICK ERA_USE_WEIGHTS
PYTHON=${PYTHON:-python}
"$PYTHON" -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 era_s10_cifar.ipynb
"$PYTHON" -c "from modular.tools.notebook import tidy_saved_outputs; tidy_saved_outputs('era_s10_cifar.ipynb')"
# the record and every figure of the finished run, written from its checkpoint without training
"$PYTHON" -m modular train --resume --data-dir "$CIFAR10_DIR" --output-dir "$ERA_OUTPUT_DIR"
