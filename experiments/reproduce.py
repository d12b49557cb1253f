r"""Reduced versions of the four studies on the real data folder, and one REPORT.md with every table and plot.

  MEDUNLEARN_DATA_DIR=../shared/data make reproduce      # = python -m experiments.reproduce --workdir=runs/reproduce

Studies (CPU-sized; each resumes when re-run):
  forget_size   RetinaMNIST (random images: 1, 10, 50 %) and NIH ChestX-ray14 (random patients: 10, 50 %)
  sex           HAM10000 (8x8 upsampled to 28 px), female-only vs male-only forget sets of equal size
  difficulty    RetinaMNIST, easiest / hardest / random tercile
  tuning        RetinaMNIST, learning rate × epochs grids of finetune and neggrad_plus, selected on validation
Algorithms: finetune, neggrad_plus, salun (--algorithms to change); seeds 0 and 1 (--seeds).
"""
import pathlib
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections

from experiments.configs import study_difficulty
from experiments.configs import study_forget_size
from experiments.configs import study_sex
from experiments.configs import study_tuning
from medunlearn_jax import studies
from medunlearn_jax import tuning

_WORKDIR = flags.DEFINE_string('workdir', 'runs/reproduce', 'Where the studies and REPORT.md go.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1'], 'Seeds of every study.')
_ALGORITHMS = flags.DEFINE_string('algorithms', 'finetune,neggrad_plus,salun', 'Algorithms compared.')


def reduced_configs() -> dict[str, ml_collections.ConfigDict]:
  seeds = [int(s) for s in _SEEDS.value]
  size = study_forget_size.get_config()
  size.study.update(fractions=[0.01, 0.1, 0.5], seeds=seeds)
  patients = study_forget_size.get_config()
  patients.dataset.name, patients.dataset.task = 'nih_chestxray14', 'binary'
  patients.train.epochs = 8.0
  patients.batch_size = 64
  patients.study.update(fractions=[0.1, 0.5], patients=True, seeds=seeds)
  sex = study_sex.get_config()
  sex.study.seeds = seeds
  difficulty = study_difficulty.get_config()
  difficulty.study.seeds = seeds
  out = {'forget_size_retinamnist': size, 'forget_size_nih_patients': patients, 'sex_ham10000': sex,
         'difficulty_retinamnist': difficulty}
  for config in out.values():
    config.algorithms = _ALGORITHMS.value
  return out


def _embed(name: str, folder: pathlib.Path, root: pathlib.Path, markdown: str, images) -> list[str]:
  lines = [f'## {name}', '', markdown.replace('# ', '### ', 1), '']
  for image in images:
    if (folder / image).exists():
      lines += [f'![{name} {image}]({(folder / image).relative_to(root)})', '']
  return lines


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value).absolute()
  lines = ['# medunlearn_jax: reduced studies of "Machine Unlearning for Medical Imaging"', '',
           'Produced by `make reproduce` (experiments/reproduce.py). Means ± std over seeds '
           f'{_SEEDS.value}; accuracies in %.', '']
  timings = {}
  for name, config in reduced_configs().items():
    start = time.time()
    logging.info('study %s', name)
    studies.run_study(config, root / name)
    timings[name] = time.time() - start
    lines += _embed(name, root / name, root, (root / name / 'study.md').read_text(), ['study.png'])
  config = study_tuning.get_config()
  config.algorithms = 'finetune,neggrad_plus'  # Two grids keep the reduced run CPU-sized.
  start = time.time()
  tuning.run_tuning(config, root / 'tuning_retinamnist')
  timings['tuning_retinamnist'] = time.time() - start
  lines += _embed('tuning_retinamnist', root / 'tuning_retinamnist', root,
                  (root / 'tuning_retinamnist' / 'tuning.md').read_text(), ['tuning.png'])
  lines += ['## Wall time of this reproduction (this machine)', '', '| study | seconds |', '|---|---|']
  lines += [f'| {k} | {v:.0f} |' for k, v in timings.items()]
  (root / 'REPORT.md').write_text('\n'.join(lines) + '\n')
  print(f'wrote {root / "REPORT.md"}')


if __name__ == '__main__':
  app.run(main)
