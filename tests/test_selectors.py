"""Forget-set selectors: each selector on a synthetic split, validation errors, equal-size sex arms, patient
completeness and the retain/forget disjointness check."""
import json

import ml_collections
import numpy as np
import pytest

from medunlearn_jax import errors
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import forget
from medunlearn_jax.data import selectors

N_PATIENTS = 20
IMAGES_PER_PATIENT = 3


def make_train(*, multilabel: bool = False, with_patients: bool = True) -> ds_lib.Split:
  """60 images of 20 patients (3 each); 14 female / 6 male patients; ids are not row positions."""
  n = N_PATIENTS * IMAGES_PER_PATIENT
  rng = np.random.default_rng(0)
  patient = np.repeat(np.arange(N_PATIENTS), IMAGES_PER_PATIENT)
  pids = np.asarray([f'p{p:03d}' for p in patient])
  sex = np.where(patient < 14, 'F', 'M')
  age = (20.0 + 3.0 * patient).astype(np.float32)
  age[pids == 'p005'] = np.nan
  ids = 1000 + 7 * np.arange(n, dtype=np.int64)[::-1]  # descending, so positions != sorted order
  labels = (rng.integers(0, 2, (n, 4)) if multilabel else np.arange(n) % 3).astype(np.int64)
  meta = {'sex': sex, 'age': age}
  if with_patients:
    meta['patient_id'] = pids
  return ds_lib.Split('train', ids, np.zeros((n, 2, 2, 1), np.uint8), labels, meta)


def rows_of(train, manifest):
  return train.positions(manifest.ids)


def test_registry_lists_every_selector():
  assert set(selectors.names()) == {
      'random_fraction', 'random_count', 'patient_fraction', 'patient_count', 'class', 'sex', 'age_range',
      'difficulty', 'id_file', 'patient_file'}
  with pytest.raises(errors.UserError, match='choose one of'):
    selectors.get('nope')


def test_random_fraction_is_forget_select_random_fraction():
  train = make_train()
  m = selectors.select(train, {'selector': 'random_fraction', 'fraction': 0.1}, seed=3)
  ref = forget.select_random_fraction(train, 0.1, 3)
  assert m.sha256 == ref.sha256 and m.selector == 'random_fraction' and m.params == {'fraction': 0.1}
  with pytest.raises(errors.UserError):
    selectors.select(train, {'selector': 'random_fraction', 'fraction': 1.5}, seed=0)


def test_random_count_seeded_and_validated():
  train = make_train()
  a = selectors.select(train, {'selector': 'random_count', 'count': 7}, seed=1)
  b = selectors.select(train, {'selector': 'random_count', 'count': 7}, seed=1)
  c = selectors.select(train, {'selector': 'random_count', 'count': 7}, seed=2)
  assert len(a.ids) == 7 and a.sha256 == b.sha256 != c.sha256
  assert np.all(np.diff(a.ids) > 0)  # sorted unique
  json.dumps(a.to_json())
  with pytest.raises(errors.UserError, match='retain set would be empty'):
    selectors.select(train, {'selector': 'random_count', 'count': len(train)}, seed=0)
  with pytest.raises(errors.UserError, match='only 60 are available'):
    selectors.select(train, {'selector': 'random_count', 'count': 61}, seed=0)
  with pytest.raises(errors.UserError, match='positive integer'):
    selectors.select(train, {'selector': 'random_count', 'count': 0}, seed=0)


@pytest.mark.parametrize('params', [{'selector': 'patient_fraction', 'fraction': 0.25},
                                    {'selector': 'patient_count', 'count': 5}])
def test_patient_selectors_take_all_images_of_chosen_patients(params):
  train = make_train()
  m = selectors.select(train, params, seed=0)
  assert len(m.patient_ids) == 5 and len(m.ids) == 5 * IMAGES_PER_PATIENT
  pids = train.meta['patient_id']
  np.testing.assert_array_equal(np.sort(train.ids[np.isin(pids, m.patient_ids)]), m.ids)
  retain, forget_split = forget.split_train(train, m)
  assert not set(retain.meta['patient_id']) & set(m.patient_ids)
  assert len(forget_split) == len(m.ids)
  again = selectors.select(train, params, seed=0)
  assert again.sha256 == m.sha256 and again.patient_ids == m.patient_ids


def test_patient_selectors_need_patient_ids():
  with pytest.raises(errors.UserError, match="'patient_id' metadata"):
    selectors.select(make_train(with_patients=False), {'selector': 'patient_count', 'count': 2}, seed=0)


def test_class_selector():
  train = make_train()
  m = selectors.select(train, {'selector': 'class', 'label': 1, 'fraction': 0.5}, seed=0)
  assert len(m.ids) == 10 and np.all(train.labels[rows_of(train, m)] == 1)
  m = selectors.select(train, {'selector': 'class', 'label': 2, 'count': 3}, seed=0)
  assert len(m.ids) == 3 and np.all(train.labels[rows_of(train, m)] == 2)
  with pytest.raises(errors.UserError, match='no retain example of class'):
    selectors.select(train, {'selector': 'class', 'label': 0}, seed=0)  # the whole class
  with pytest.raises(errors.UserError, match='no image of class 5'):
    selectors.select(train, {'selector': 'class', 'label': 5}, seed=0)
  with pytest.raises(errors.UserError, match='not both'):
    selectors.select(train, {'selector': 'class', 'label': 1, 'fraction': 0.5, 'count': 2}, seed=0)


def test_class_selector_multilabel_takes_positives():
  train = make_train(multilabel=True)
  m = selectors.select(train, {'selector': 'class', 'label': 2}, seed=0)
  np.testing.assert_array_equal(m.ids, np.sort(train.ids[train.labels[:, 2] == 1]))
  with pytest.raises(errors.UserError, match='0..3'):
    selectors.select(train, {'selector': 'class', 'label': 4}, seed=0)


def test_sex_selector_draws_one_sex_from_a_fraction_of_the_whole_set():
  train = make_train()
  m = selectors.select(train, {'selector': 'sex', 'sex': 'F', 'fraction': 0.1}, seed=0)
  assert len(m.ids) == 6 and np.all(train.meta['sex'][rows_of(train, m)] == 'F')
  m = selectors.select(train, {'selector': 'sex', 'sex': 'male', 'count': 4}, seed=0)
  assert len(m.ids) == 4 and np.all(train.meta['sex'][rows_of(train, m)] == 'M')
  assert m.params['sex'] == 'M'
  with pytest.raises(errors.UserError, match="'F' or 'M'"):
    selectors.select(train, {'selector': 'sex', 'sex': 'X', 'fraction': 0.1}, seed=0)
  # 18 male images only: 40 % of 60 = 24 is infeasible for M without matching.
  with pytest.raises(errors.UserError, match='matched=True'):
    selectors.select(train, {'selector': 'sex', 'sex': 'M', 'fraction': 0.4}, seed=0)


def test_matched_sex_arms_have_equal_size():
  train = make_train()
  arms = {s: selectors.select(train, {'selector': 'sex', 'sex': s, 'fraction': 0.4, 'matched': True}, seed=0)
          for s in ('F', 'M')}
  assert len(arms['F'].ids) == len(arms['M'].ids) == 18  # min(24, 42 F, 18 M)
  for s, m in arms.items():
    assert np.all(train.meta['sex'][rows_of(train, m)] == s)
  small = {s: selectors.select(train, {'selector': 'sex', 'sex': s, 'fraction': 0.1, 'matched': True}, seed=0)
           for s in ('F', 'M')}
  assert len(small['F'].ids) == len(small['M'].ids) == 6


def test_age_range_selector():
  train = make_train()
  m = selectors.select(train, {'selector': 'age_range', 'min_age': 20, 'max_age': 35}, seed=0)
  ages = train.meta['age'][rows_of(train, m)]
  assert np.all((ages >= 20) & (ages <= 35))
  assert len(m.ids) == 5 * IMAGES_PER_PATIENT  # patients aged 20, 23, ..., 35, less p005 (unknown age)
  m = selectors.select(train, {'selector': 'age_range', 'min_age': 60, 'fraction': 0.5}, seed=0)
  assert np.all(train.meta['age'][rows_of(train, m)] >= 60)
  with pytest.raises(errors.UserError, match='min_age, max_age or both'):
    selectors.select(train, {'selector': 'age_range'}, seed=0)
  with pytest.raises(errors.UserError, match='above max_age'):
    selectors.select(train, {'selector': 'age_range', 'min_age': 50, 'max_age': 40}, seed=0)
  with pytest.raises(errors.UserError, match='no training image'):
    selectors.select(train, {'selector': 'age_range', 'min_age': 200}, seed=0)


def test_difficulty_selector_arms():
  train = make_train()
  scores = np.random.default_rng(1).permutation(len(train)).astype(np.float64)
  pick = lambda arm, **kw: selectors.select(train, {'selector': 'difficulty', 'arm': arm, **kw}, seed=0,
                                            difficulty=scores)
  easy, hard, rand = pick('easiest'), pick('hardest'), pick('random')
  assert len(easy.ids) == len(hard.ids) == len(rand.ids) == 20  # a tercile of 60
  assert scores[rows_of(train, easy)].max() < scores[rows_of(train, hard)].min()
  np.testing.assert_array_equal(np.sort(scores[rows_of(train, easy)]), np.arange(20))
  assert len(pick('hardest', fraction=0.1).ids) == 6
  assert easy.params['scores_sha256'] == hard.params['scores_sha256']
  # 'random' is the control and needs no scores.
  assert len(selectors.select(train, {'selector': 'difficulty', 'arm': 'random', 'count': 5}, seed=0).ids) == 5
  with pytest.raises(errors.UserError, match='needs per-example difficulty'):
    selectors.select(train, {'selector': 'difficulty', 'arm': 'easiest'}, seed=0)
  with pytest.raises(errors.UserError, match='aligned'):
    selectors.select(train, {'selector': 'difficulty', 'arm': 'easiest'}, seed=0, difficulty=scores[:-1])
  bad = scores.copy()
  bad[3] = np.nan
  with pytest.raises(errors.UserError, match='NaN'):
    selectors.select(train, {'selector': 'difficulty', 'arm': 'hardest'}, seed=0, difficulty=bad)
  with pytest.raises(errors.UserError, match='arm must be'):
    pick('medium')


def test_id_file_text_json_and_manifest(tmp_path):
  train = make_train()
  pids = train.meta['patient_id']
  whole = np.sort(train.ids[np.isin(pids, ['p001', 'p002'])])
  text = tmp_path / 'request.txt'
  text.write_text('# deletion request 42\n' + '\n'.join(map(str, whole[:3])) + '\n' + ', '.join(map(str, whole[3:])))
  m = selectors.select(train, {'selector': 'id_file', 'path': str(text)}, seed=0)
  np.testing.assert_array_equal(m.ids, whole)
  assert m.patient_ids == ('p001', 'p002') and len(m.params['file_sha256']) == 64
  as_json = tmp_path / 'request.json'
  as_json.write_text(json.dumps([int(i) for i in whole]))
  assert selectors.select(train, {'selector': 'id_file', 'path': str(as_json)}, seed=0).sha256 == m.sha256
  manifest_file = tmp_path / 'forget_manifest.json'
  manifest_file.write_text(json.dumps(m.to_json()))
  assert selectors.select(train, {'selector': 'id_file', 'path': str(manifest_file)}, seed=0).sha256 == m.sha256


def test_id_file_validation(tmp_path):
  train = make_train()
  f = tmp_path / 'ids.txt'

  def run(content, **kw):
    f.write_text(content)
    return selectors.select(train, {'selector': 'id_file', 'path': str(f), **kw}, seed=0)

  with pytest.raises(errors.UserError, match=r'not in the training split: \[5, 6\]'):
    run(f'{train.ids[0]}\n5\n6\n', allow_partial_patients=True)
  with pytest.raises(errors.UserError, match='twice'):
    run(f'{train.ids[0]}\n{train.ids[0]}\n', allow_partial_patients=True)
  with pytest.raises(errors.UserError, match='lists no ids'):
    run('# nothing\n')
  with pytest.raises(errors.UserError, match='integer ids'):
    run('12a\n')
  with pytest.raises(errors.UserError, match='does not exist'):
    selectors.select(train, {'selector': 'id_file', 'path': str(tmp_path / 'absent.txt')}, seed=0)
  # One image of a patient whose other two images would stay in training.
  one = train.ids[train.meta['patient_id'] == 'p004'][0]
  with pytest.raises(errors.UserError, match=r"only some images of 1 patient.*\['p004'\] would keep \[2\]"):
    run(f'{one}\n')
  m = run(f'{one}\n', allow_partial_patients=True)
  assert m.patient_ids == () and m.ids.tolist() == [one]
  forget.split_train(train, m)  # image-level: the patient's other images may stay


def test_patient_file(tmp_path):
  train = make_train()
  f = tmp_path / 'patients.txt'
  f.write_text('p003\np010\n')
  m = selectors.select(train, {'selector': 'patient_file', 'path': str(f)}, seed=0)
  assert m.patient_ids == ('p003', 'p010') and len(m.ids) == 6
  f.write_text('p003\nq999\n')
  with pytest.raises(errors.UserError, match=r"\['q999'\]"):
    selectors.select(train, {'selector': 'patient_file', 'path': str(f)}, seed=0)
  f.write_text(json.dumps({'patient_ids': ['p003', 'p003']}))
  with pytest.raises(errors.UserError, match='twice'):
    selectors.select(train, {'selector': 'patient_file', 'path': str(f)}, seed=0)


def test_select_params_are_validated():
  train = make_train()
  with pytest.raises(errors.UserError, match='no selector'):
    selectors.select(train, {'fraction': 0.1}, seed=0)
  with pytest.raises(errors.UserError, match=r"does not take \['fraction'\]"):
    selectors.select(train, {'selector': 'patient_count', 'count': 2, 'fraction': 0.1}, seed=0)
  with pytest.raises(errors.UserError, match=r"needs \['count'\]"):
    selectors.select(train, {'selector': 'random_count'}, seed=0)
  # None values are dropped, and a ConfigDict works like a dict.
  cfg = ml_collections.ConfigDict({'selector': 'random_count', 'count': 4, 'fraction': None})
  assert len(selectors.select(train, cfg, seed=0).ids) == 4


def test_make_manifest_validation():
  train = make_train()
  with pytest.raises(errors.UserError, match='empty'):
    forget.make_manifest(train, [], selector='x', params={}, seed=0)
  with pytest.raises(errors.UserError, match='duplicate'):
    forget.make_manifest(train, [train.ids[0]] * 2, selector='x', params={}, seed=0)
  with pytest.raises(errors.UserError, match='not in split'):
    forget.make_manifest(train, [3], selector='x', params={}, seed=0)


def test_check_patients_complete():
  train = make_train()
  pids = train.meta['patient_id']
  full = train.ids[np.isin(pids, ['p000', 'p007'])]
  assert forget.check_patients_complete(train, full) == ('p000', 'p007')
  with pytest.raises(errors.UserError, match='only some images'):
    forget.check_patients_complete(train, full[:-1])


def test_disjointness_check_and_manifest_hash(tmp_path):
  train = make_train()
  m = selectors.select(train, {'selector': 'patient_count', 'count': 3}, seed=0)
  retain, _ = forget.split_train(train, m)
  forget.check_disjoint(retain, m)
  # A forget id put back into the retain set.
  leaked = ds_lib.concat([retain, train.take(train.positions(m.ids[:1]))], 'retain')
  with pytest.raises(errors.DataError, match='forget id'):
    forget.check_disjoint(leaked, m)
  # An image of a forgotten patient that the manifest does not list (e.g. added to training later).
  extra = train.take(train.positions(m.ids[:1]))
  extra = ds_lib.Split('x', np.asarray([1], np.int64), extra.images, extra.labels, dict(extra.meta))
  with pytest.raises(errors.DataError, match='forgotten patient'):
    forget.check_disjoint(ds_lib.concat([retain, extra], 'retain'), m)
  # The manifest on disk is checked against its own sha256.
  forget.write_manifest(m, tmp_path)
  assert forget.read_manifest(tmp_path).sha256 == m.sha256
  data = json.loads((tmp_path / forget.MANIFEST_NAME).read_text())
  data['ids'] = data['ids'][:-1]
  data['count'] -= 1
  (tmp_path / forget.MANIFEST_NAME).write_text(json.dumps(data))
  with pytest.raises(errors.DataError, match='inconsistent'):
    forget.read_manifest(tmp_path)


def test_difficulty_per_class_keeps_every_class_in_the_retain_set():
  ids = np.arange(30, dtype=np.int64)
  labels = np.array([0] * 24 + [1] * 6)
  split = ds_lib.Split('train', ids, np.zeros((30, 2, 2, 1), np.uint8), labels)
  scores = np.where(labels == 1, 10.0, 0.0) + ids * 0.01  # The minority class is the hardest.
  with pytest.raises(errors.UserError, match='no retain example'):
    selectors.select(split, {'selector': 'difficulty', 'arm': 'hardest', 'fraction': 0.3}, seed=0,
                     difficulty=scores)
  manifest = selectors.select(split, {'selector': 'difficulty', 'arm': 'hardest', 'fraction': 0.3,
                                      'per_class': True}, seed=0, difficulty=scores)
  # 30 % of each class: the 7 hardest of class 0 (ids 17-23) and 2 hardest of class 1 (ids 28, 29).
  assert manifest.ids.tolist() == [17, 18, 19, 20, 21, 22, 23, 28, 29]


def test_a_count_in_an_experiment_config_replaces_its_default_fraction():
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config().forget  # fraction 0.1 by default, and it cannot be unset from the CLI.
  config.selector, config.label, config.count = 'class', 1, 5
  train = make_train()
  chosen = selectors.select(train, config, seed=0, ignore_unused=True)
  assert len(chosen.ids) == 5 and np.all(train.labels[train.positions(chosen.ids)] == 1)
  with pytest.raises(errors.UserError, match='not both'):  # Given explicitly, both are still refused.
    selectors.select(train, {'selector': 'class', 'label': 1, 'count': 5, 'fraction': 0.1}, seed=0)
