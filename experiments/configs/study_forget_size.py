r"""Study 1, forget-set size: forget 1, 5, 10, 20 and 50 % of the training set (random images; random
patients too where the dataset has patient ids), every algorithm, retrain per size, several seeds.

Command:
  MEDUNLEARN_DATA_DIR=../shared/data .venv/bin/python -m experiments.study \
      --config=experiments/configs/study_forget_size.py --workdir=runs/study_forget_size
  # on NIH ChestX-ray14 with patient-level arms as well:
  #   ... --config.dataset.name=nih_chestxray14 --config.dataset.task=binary --config.study.patients=True
Runtime, measured on an idle 2-core CPU (make reproduce, 2026-11-25): 348 s for the reduced RetinaMNIST run
(3 sizes x 2 seeds, 3 algorithms, about 58 s per size and seed); this full config (5 sizes, 4 algorithms)
extrapolates to about 11 minutes. NIH patients (2 sizes x images/patients x 2 seeds, 8 epochs): 296 s.
On one GPU: not measured (no GPU was lent while this was written).
Expected result (the paper's finding): retain/forget behaviour holds up across sizes, while test accuracy of
the retrained and unlearned models falls as the forget set grows; the gap to retrain widens with size.
"""
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'retinamnist'
  config.algorithms = 'finetune,neggrad_plus,salun,scrub'
  config.study = dict(kind='forget_size', fractions=(0.01, 0.05, 0.1, 0.2, 0.5), patients=False, seeds=(0, 1))
  return config
