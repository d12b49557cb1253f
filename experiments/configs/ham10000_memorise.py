r"""The benchmark regime of the studies: HAM10000 dermatoscopy, 7 diagnoses, 28 px RGB, a plain CNN trained
until it fits its training set, so that the original memorises the forget set and a retrained model does not.

Why this regime: unlearning is measurable only where the original and the retrained model differ on the
forget set (the *forget signal*, printed after the results table). A model that generalises without
memorising (the small CNN with global pooling at 15 epochs: 73.8 % training accuracy on these images)
leaves nothing to forget, and "doing nothing" scores as well as any algorithm. The plain CNN (conv 32 →
conv 64 → dense 256, flatten head; `models.cnn.PlainCNN`) with Adam at 1e-3, no weight decay, fits the
training images (100 % training accuracy) within 40 epochs.

Command:
  MEDUNLEARN_DATA_DIR=../shared/data .venv/bin/python -m experiments.run \
      --config=experiments/configs/ham10000_memorise.py --workdir=runs/ham10000_memorise
Runtime, measured on the idle 2-core AMD EPYC VM (2026-12-06, algorithms finetune,neggrad_plus,ssd): 15 min
in all, 5.5 min per trained model (original, retrain), 2 min of evaluation.
Expected result: original 100 % training / 72.7 % test accuracy, retrain 72.4 % test; forget signal
+23 points of forget accuracy and +26 points of MIA-efficacy (95 % intervals well above zero). At their
default hyper-parameters finetune, NegGrad+ and SSD forget nothing in this regime (UA 0.00).
"""
from experiments.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'ham10000'
  config.dataset.task = 'dx'
  config.dataset.image_size = 28
  config.model.name = 'plain_cnn'
  config.train.update(optimizer='adam', lr=1e-3, momentum=0.0, weight_decay=0.0, schedule='constant',
                      epochs=40.0)
  config.algorithms = 'finetune,neggrad_plus,random_label,salun,scrub,ssd'
  return config
