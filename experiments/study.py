r"""Runs a study (forget-set size, sex, difficulty) over its arms and seeds, then aggregates it.

  python -m experiments.study --config=experiments/configs/study_forget_size.py --workdir=runs/size

Each (arm, seed) is an ordinary experiment in `<workdir>/<arm>/seed<k>`; re-running resumes. Writes
study.json, study.md and study.png.
"""
from experiments import launch
from medunlearn_jax import studies

if __name__ == '__main__':
  launch.run(studies.run_study)
