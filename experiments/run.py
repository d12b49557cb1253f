r"""Runs one experiment: original → forget set → retrain → unlearning algorithms → evaluation.

  python -m experiments.run --config=experiments/configs/default.py --workdir=runs/default \
      [--config.dataset.name=retinamnist --config.forget.fraction=0.2 --config.algorithms=finetune]

Re-running the same command resumes from the latest checkpoints. Bad input (unknown config keys, values out
of range, missing or corrupt data, a workdir of another config) ends with one error line and exit code 2; a
full disk, a read-only workdir or exhausted memory with one error line and exit code 1 (the traceback is in
<workdir>/logs/run.log, or printed with --verbosity=1).
"""
from experiments import launch
from medunlearn_jax import pipeline

if __name__ == '__main__':
  launch.run(pipeline.run_experiment)
