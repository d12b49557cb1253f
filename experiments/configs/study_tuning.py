r"""Study 4, tuning cost: for each algorithm a learning-rate × epochs grid over its documented search space,
selected on the validation set (smallest val_gap = mean |Δ| of forget/retain/val accuracy to retrain); the
total compute of the search is reported next to the chosen setting alone, as multiples of one retrain.

Command:
  MEDUNLEARN_DATA_DIR=../shared/data .venv/bin/python -m experiments.tune \
      --config=experiments/configs/study_tuning.py --workdir=runs/study_tuning
Expected runtime: about 10 minutes on a 2-core CPU (RetinaMNIST 28 px, small CNN, 3 algorithms × 20 points);
1-2 minutes on one GPU.
Expected result (the paper's finding): the search costs several retrains' worth of compute even when the
chosen setting alone costs a fraction of one retrain.
"""
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'retinamnist'
  config.algorithms = 'finetune,neggrad_plus,salun'
  config.tuning = dict(dims=['lr', 'epochs'])
  return config
