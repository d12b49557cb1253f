r"""Study 3, difficulty: forget the easiest, the hardest, or a random tercile of the training set, scored by
the original model's per-example loss (taken within every class, since on RetinaMNIST the globally hardest
tercile holds every example of the minority grades and would empty them from the retain set); report per arm.

Command:
  MEDUNLEARN_DATA_DIR=../shared/data .venv/bin/python -m experiments.study \
      --config=experiments/configs/study_difficulty.py --workdir=runs/study_difficulty
Runtime, measured on an idle 2-core CPU (make reproduce, 3 algorithms): 304 s for 3 arms x 2 seeds
(RetinaMNIST 28 px, small CNN); with scrub (this config) about 6 minutes. On one GPU: not measured.
Expected result (the paper's finding): algorithms can be biased toward easy or hard samples — forgetting the
hardest tercile moves forget accuracy furthest from the original, and the gap to retrain differs by arm.
"""
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'retinamnist'
  config.algorithms = 'finetune,neggrad_plus,salun,scrub'
  config.study = dict(kind='difficulty', fraction=0.333, seeds=(0, 1))
  return config
