r"""Study 4: the cost of hyper-parameter tuning (grid per algorithm, vmapped over learning rates).

  python -m experiments.tune --config=experiments/configs/study_tuning.py --workdir=runs/tuning

Writes tuning.json, tuning.md and tuning.png.
"""
from experiments import launch
from medunlearn_jax import tuning

if __name__ == '__main__':
  launch.run(tuning.run_tuning)
