r"""Study 4, tuning cost: for each algorithm a learning-rate × epochs grid over its documented search space,
selected on the validation set (smallest val_gap = mean |Δ| of forget/retain/val accuracy to retrain); the
total compute of the search is reported next to the chosen setting alone, as multiples of one retrain.

Command:
  MEDUNLEARN_DATA_DIR=../shared/data .venv/bin/python -m experiments.tune \
      --config=experiments/configs/study_tuning.py --workdir=runs/study_tuning
Runtime, measured on an idle 2-core CPU (make reproduce): 335 s for the finetune (20 points) and
neggrad_plus (16 points) grids on RetinaMNIST 28 px, small CNN; with salun (this config) about 8 minutes.
On one GPU: not measured.
Expected result (the paper's finding): the search costs several retrains' worth of compute even when the
chosen setting alone costs a fraction of one retrain. Measured in make reproduce: finetune's search 5.3x a
retrain's time (3.7x its FLOPs) for a chosen setting of 0.34x; neggrad_plus 7.8x (5.9x) for 0.68x.
"""
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'retinamnist'
  config.algorithms = 'finetune,neggrad_plus,salun'
  config.tuning = dict(dims=['lr', 'epochs'])
  return config
