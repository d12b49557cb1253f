r"""Default experiment: PneumoniaMNIST 28 px, small CNN, 10 % random forget set; original, retrain, finetune.

Command (offline, with the data folder given):
  MEDUNLEARN_DATA_DIR=../shared/data make run
  # same as: .venv/bin/python -m experiments.run --config=experiments/configs/default.py --workdir=runs/default
Expected runtime: a few minutes on a 2-core CPU; well under a minute on one GPU.
Expected result: original test accuracy >= 0.83 (published MedMNIST ResNet-18: 0.854); retrain close to it;
finetune's forget accuracy moves toward retrain's at a fraction of retrain's cost.
Overrides: --config.dataset.name=retinamnist --config.forget.fraction=0.2 --config.algorithms=finetune ...
"""
import ml_collections
from ml_collections.config_dict import placeholder

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import erm


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'pneumoniamnist'
  config.dataset.image_size = 28
  config.dataset.task = ''             # Task of the datasets with several (e.g. nih_chestxray14: binary).
  config.dataset.raw_data_dir = ''     # Root of raw dataset folders; '' = $MEDUNLEARN_DATA_DIR.
  config.dataset.tfds_data_dir = ''    # Built TFDS datasets; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.dataset.download = True       # Download official files when absent from the raw folder.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'small_cnn'      # small_cnn | plain_cnn | resnet18
  config.model.dtype = 'float32'       # Compute dtype; parameters stay float32.
  # Layers: 'xla' = stock Flax (every GPU/TPU and multi-device run; forward-mode AD); 'native' = the CPU
  # kernels of medunlearn_jax.ops (single-device XLA:CPU float32 only); 'auto' = 'native' exactly where it
  # is valid and measured faster, else 'xla'. The layers used are logged and recorded in results.json.
  config.model.kernels = 'auto'

  config.batch_size = 128              # Global batch size, split over all devices.
  config.eval_batch_size = 512

  # The recipe of the original model, reused unchanged for the retrained (gold-standard) model.
  config.train = erm.default_config()
  config.train.lr = 0.05
  config.train.epochs = 15.0
  del config.train['stream']

  # Which training examples a deletion request names (medunlearn_jax/data/selectors.py). Each selector
  # reads the fields it takes: random_fraction/random_count, patient_fraction/patient_count (all images of
  # random patients), class (label), sex (sex, matched), age_range (min_age, max_age), difficulty (arm:
  # easiest|hardest|random, scored by the original model's per-example loss), id_file/patient_file (path).
  config.forget = ml_collections.ConfigDict()
  config.forget.selector = 'random_fraction'
  config.forget.fraction = 0.1
  config.forget.count = placeholder(int)  # When set, replaces fraction (class/sex/age/difficulty too).
  config.forget.label = placeholder(int)
  config.forget.sex = placeholder(str)
  config.forget.matched = placeholder(bool)
  config.forget.min_age = placeholder(float)
  config.forget.max_age = placeholder(float)
  config.forget.arm = placeholder(str)
  config.forget.per_class = placeholder(bool)  # difficulty: the same fraction within every class.
  config.forget.path = placeholder(str)
  config.forget.allow_partial_patients = placeholder(bool)

  # Comma-separated unlearning algorithms; original and retrain always run as references.
  config.algorithms = 'finetune'
  config.algo = algorithms.default_configs()

  # Populations of N retrained and N unlearned models per algorithm (one vmapped program each) for the
  # NeurIPS 2023 challenge's per-example forgetting quality and U-LiRA; 0 = off (N=8+ on a CPU costs about
  # N retrains; 128+ on a GPU).
  config.populations = ml_collections.ConfigDict()
  config.populations.n = 0

  # How results are measured from the output caches (medunlearn_jax/evaluation/results.py).
  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.attack_seeds = 5   # MIA repetitions: mean ± sd over seeds seed, seed + 1, ...
  config.evaluation.n_boot = 2000      # Bootstrap replicates of the subgroup intervals.

  config.report = True                 # Write the PNG plots with results.md/csv (python -m experiments.report).
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.distributed = False           # Call jax.distributed.initialize() (multi-host runs).
  return config
