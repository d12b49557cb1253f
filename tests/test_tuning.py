"""The tuning study: every grid point scored on validation, the smallest gap chosen, the search costed."""
import json

import ml_collections

from medunlearn_jax import tuning
from test_pipeline import small_config


def test_tuning_grid_selects_on_validation_and_costs_the_search(tmp_path, synthetic_medmnist):
  config = small_config()
  config.algorithms = 'finetune'
  config.algo.finetune.search_space = {'lr': [0.001, 0.01, 0.1], 'epochs': [1, 2]}
  config.tuning = ml_collections.ConfigDict({'dims': ['lr', 'epochs']})
  out = tuning.run_tuning(config, tmp_path)
  entry = out['algorithms']['finetune']
  assert len(entry['points']) == 6
  gaps = [p['val_gap'] for p in entry['points']]
  assert entry['chosen']['val_gap'] == min(gaps)
  reference = out['retrain_accuracy']
  p = entry['points'][0]
  expected = (abs(p['accuracy']['forget'] - reference['forget']) + abs(p['accuracy']['retain'] - reference['retain'])
              + abs(p['accuracy']['val'] - reference['val'])) / 3
  assert abs(p['val_gap'] - expected) < 1e-12
  # Six models of 1 or 2 epochs over 216 retain examples in batches of 32: 3 × (7 + 14) model-steps.
  assert entry['search_cost']['model_steps'] == 63
  assert entry['search_cost']['flops'] > entry['chosen_cost']['flops'] > 0
  assert json.loads((tmp_path / 'tuning.json').read_text())['algorithms']['finetune']['chosen']
  assert (tmp_path / 'tuning.md').read_text().startswith('# Hyper-parameter tuning cost')
  assert (tmp_path / 'tuning.png').stat().st_size > 5000


def test_grid_without_learning_rate_dimension():
  hp = ml_collections.ConfigDict({'alpha': 1.0, 'search_space': {'alpha': [1.0, 3.0], 'lam': [0.5]}})
  lrs, settings = tuning.grid(hp, ['lr', 'epochs'])
  assert lrs is None and settings == [{'alpha': 1.0, 'lam': 0.5}, {'alpha': 3.0, 'lam': 0.5}]
