"""Membership-inference attacks, the NeurIPS 2023 challenge's ε / forgetting quality, and U-LiRA."""
import math

import numpy as np
import pytest

from medunlearn_jax.evaluation import privacy

DELTA = privacy.DELTA
# Four unlearned and four retrained scores of one example, sorted together: 0u 1u 2u 2.5r 3u 4r 5r 6r.
U_HAND = np.array([0.0, 1.0, 2.0, 3.0])
R_HAND = np.array([2.5, 4.0, 5.0, 6.0])
# The retrained median (4.5) is larger, so "score >= t" predicts retrained. t <= 2.5 predicts all four r
# (FNR = 0) and t > 3 predicts no u (FPR = 0): one zero rate, dropped. t in (2.5, 3] predicts {3u, 4r, 5r, 6r}:
# TPR = 3/4, FNR = 1/4, FPR = 1/4, and ε = log((1 - δ - 1/4) / (1/4)) = log(3 - 4δ) (both terms are equal).
# Intervals predict the peakier unlearned population (range 3 < 3.5); to keep FNR > 0 one u score stays out,
# and to keep FPR > 0 at least 2.5r goes in, so the best interval also has TPR = 3/4, FPR = 1/4: no larger ε.
EPS_HAND = math.log(3 - 4 * DELTA)


def test_logit_scaled_confidence():
  np.testing.assert_allclose(privacy.logit_scaled_confidence([0.5, 0.75, 0.25]), [0.0, math.log(3), -math.log(3)])
  # p = 1 is clipped to 1 - 1e-15: log((1 - 1e-15) / 1e-15) ~ 34.54, finite.
  assert privacy.logit_scaled_confidence(1.0) == pytest.approx(math.log((1 - 1e-15) / 1e-15), rel=1e-3)
  # logits (2, 0, 0), label 0: p = e^2 / (e^2 + 2), p / (1 - p) = e^2 / 2 -> 2 - log 2.
  out = privacy.logit_scaled_confidence_from_logits(np.array([[2.0, 0.0, 0.0]]), np.array([0]))
  np.testing.assert_allclose(out, [2 - math.log(2)])


def test_epsilon_hand_case():
  assert privacy.per_example_epsilon(U_HAND, R_HAND, rules=('single',)) == pytest.approx(EPS_HAND)
  assert privacy.per_example_epsilon(U_HAND, R_HAND) == pytest.approx(EPS_HAND)
  # Swapping the populations only relabels the classes.
  assert privacy.per_example_epsilon(R_HAND, U_HAND) == pytest.approx(EPS_HAND)


def test_epsilon_identical_populations_is_zero_and_scores_one():
  # Every rule has FPR = TPR: log((1 - δ - FPR) / (1 - FPR)) <= 0 and log((FPR - δ) / FPR) <= 0 -> floored at 0.
  scores = np.array([-1.3, 0.2, 0.7, 2.0, 3.1])
  eps = privacy.per_example_epsilon(scores, scores.copy())
  assert eps == 0.0
  assert privacy.epsilon_score(eps) == 1.0


def test_epsilon_disjoint_populations_hit_the_cap():
  eps = privacy.per_example_epsilon(U_HAND, U_HAND + 10)  # a threshold at 10 gives FPR = FNR = 0
  assert eps == privacy.EPSILON_CAP
  assert privacy.per_example_epsilon(U_HAND, U_HAND + 10, cap=7.0) == 7.0
  assert privacy.epsilon_score(eps, max_epsilon=privacy.default_max_epsilon(4)) == 0.0


def test_epsilon_collapsed_population_hits_the_cap():
  # Range 0.01 vs 3: ratio below 1 %, the challenge's peaky rule.
  assert privacy.per_example_epsilon(U_HAND, np.array([1.0, 1.0, 1.01, 1.0])) == privacy.EPSILON_CAP
  # Without the rule: the interval [1, 1] holds three r and one u (1.0), TPR = 3/4, FPR = 1/4 -> log(3 - 4δ).
  assert privacy.per_example_epsilon(U_HAND, np.array([1.0, 1.0, 1.01, 1.0]), peaky_ratio=None) == (
      pytest.approx(EPS_HAND))


def test_epsilon_vectorised_matches_per_example():
  rng = np.random.default_rng(0)
  u, r = rng.normal(size=(8, 6)), rng.normal(0.8, 1.0, size=(8, 6))
  batch = privacy.forget_epsilons(u, r)
  single = [privacy.per_example_epsilon(u[:, i], r[:, i]) for i in range(6)]
  np.testing.assert_allclose(batch, single)
  # More attacks can only raise ε.
  assert np.all(privacy.forget_epsilons(u, r, rules=('single',)) <= batch + 1e-12)
  assert np.all(batch <= privacy.forget_epsilons(u, r, buffer=None, thresholds='continuous') + 1e-12)


def _challenge_epsilon(u, r, delta=DELTA):
  """The challenge's per-example ε written out directly: rates as means over models at every grid threshold."""
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  d_pos, d_neg = np.ptp(pos), np.ptp(neg)
  if min(d_pos, d_neg) / max(d_pos, d_neg) < 0.01:
    return privacy.EPSILON_CAP
  lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
  t = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
  fpr = [np.mean(neg[:, None] >= t, axis=0)]
  fnr = [np.mean(pos[:, None] < t, axis=0)]
  p, n = (neg, pos) if d_pos >= d_neg else (pos, neg)
  w = min(d_pos, d_neg)
  t_r = np.linspace(p.min() + w - 2, p.max() + 2, int(np.ceil((p.max() + 2 - (p.min() + w - 2)) * 100)))
  t_r = np.repeat(t_r, 400)
  t_l = np.concatenate([np.linspace(x - w - 2, x - w + 2, 400) for x in t_r[::400]])
  fpr.append(np.mean((t_l <= n[:, None]) & (n[:, None] <= t_r), axis=0))
  fnr.append(np.mean(~((t_l <= p[:, None]) & (p[:, None] <= t_r)), axis=0))
  fpr, fnr = np.concatenate(fpr), np.concatenate(fnr)
  if np.any((fpr == 0) & (fnr == 0)):
    return privacy.EPSILON_CAP
  keep = (fpr > 0) & (fnr > 0)
  with np.errstate(invalid='ignore'):  # log(1 - δ - 1) is NaN, skipped as by the reference's nanmax.
    eps = np.fmax(np.log(1 - delta - fpr[keep]) - np.log(fnr[keep]), np.log(1 - delta - fnr[keep]) - np.log(fpr[keep]))
  return min(max(float(np.nanmax(eps)), 0.0), privacy.EPSILON_CAP) if keep.any() else 0.0


def test_epsilon_grid_is_the_challenges_and_differs_from_every_cut():
  # Only a cut inside [1.4, 1.404) separates these; the challenge's grid steps 4/399 and cannot place one.
  u, r = np.array([1.0, 1.2, 1.4]), np.array([0.0, 0.6, 1.404])
  assert privacy.per_example_epsilon(u, r) == pytest.approx(math.log(2 - 3 * DELTA))
  assert privacy.per_example_epsilon(u, r, thresholds='continuous') == privacy.EPSILON_CAP
  rng = np.random.default_rng(1)
  for scale in (0.05, 0.1, 1.0):  # Narrow populations are where the two differ most.
    u, r = rng.normal(0, scale, size=(6, 4)), rng.normal(scale, scale, size=(6, 4))
    grid = privacy.forget_epsilons(u, r)
    np.testing.assert_allclose(grid, [_challenge_epsilon(u[:, i], r[:, i]) for i in range(4)], rtol=1e-9)
    assert np.all(grid <= privacy.forget_epsilons(u, r, thresholds='continuous') + 1e-12)


def test_epsilon_score_buckets():
  # Bucket k = floor(ε / 0.5) scores 2^-k.
  eps = np.array([0.0, 0.49, 0.5, 0.99, 1.0, EPS_HAND, 2.2])
  np.testing.assert_allclose(privacy.epsilon_score(eps), [1, 1, 0.5, 0.5, 0.25, 0.25, 1 / 16])
  # With max_epsilon = 1 only the buckets [0, 0.5) and [0.5, 1) award points.
  np.testing.assert_allclose(privacy.epsilon_score(eps, max_epsilon=1.0), [1, 1, 0.5, 0.5, 0, 0, 0])
  assert privacy.epsilon_score(0.7) == 0.5
  with pytest.raises(ValueError):
    privacy.epsilon_score(-0.1)


def test_forgetting_quality_by_hand():
  # Three forget examples: identical (ε = 0 -> 1 point), the hand case (ε = log 3 ~ 1.10 -> bucket 2 ->
  # 1/4), disjoint (cap -> beyond max_epsilon = ceil(log(4 - 1)) = 2 -> 0). F = (1 + 1/4 + 0) / 3.
  unlearned = np.stack([U_HAND, U_HAND, U_HAND], axis=1)
  retrained = np.stack([U_HAND, R_HAND, U_HAND + 10], axis=1)
  assert privacy.default_max_epsilon(4) == 2.0
  assert privacy.forgetting_quality(unlearned, retrained) == pytest.approx(1.25 / 3)
  # Without the limit the capped example still earns 2^-100, i.e. nothing measurable.
  assert privacy.forgetting_quality(unlearned, retrained, max_epsilon=None) == pytest.approx(1.25 / 3)


def test_final_score():
  # 0.5 * (0.9 / 0.95) * (0.8 / 0.85)
  assert privacy.final_score(0.5, 0.9, 0.95, 0.8, 0.85) == pytest.approx(0.5 * 0.9 / 0.95 * 0.8 / 0.85)


def test_simple_mia_separable_vs_identical():
  rng = np.random.default_rng(0)
  # Forget losses near 0 (memorised) vs test losses in [2, 3]: a threshold separates them.
  assert privacy.simple_mia(rng.uniform(0, 0.1, 300), rng.uniform(2, 3, 200)) == pytest.approx(1.0)
  same = privacy.simple_mia(rng.exponential(1.0, 400), rng.exponential(1.0, 400))
  assert abs(same - 0.5) < 0.12
  # Constant, equal losses give the attacker nothing: exactly chance.
  assert privacy.simple_mia(np.full(40, 0.3), np.full(40, 0.3)) == 0.5
  a, b = rng.exponential(1.0, 50), rng.exponential(2.0, 80)
  assert privacy.simple_mia(a, b, seed=3) == privacy.simple_mia(a, b, seed=3)


def test_mia_efficacy_sanity():
  rng = np.random.default_rng(1)
  retain, test = rng.uniform(0.9, 1.0, 400), rng.uniform(0.1, 0.6, 300)
  # Forget examples that look like training data -> predicted members -> efficacy ~ 0; like unseen data -> ~ 1.
  assert privacy.mia_efficacy(retain, test, rng.uniform(0.9, 1.0, 100)) < 0.05
  assert privacy.mia_efficacy(retain, test, rng.uniform(0.1, 0.6, 100)) > 0.95
  assert privacy.mia_efficacy(retain, test, rng.uniform(0.1, 0.6, 100), attack='logistic') > 0.95
  forget = np.concatenate([rng.uniform(0.9, 1.0, 50), rng.uniform(0.1, 0.6, 50)])
  assert privacy.mia_efficacy(retain, test, forget) == pytest.approx(0.5, abs=0.05)
  assert privacy.mia_efficacy(retain, test, forget, seed=4) == privacy.mia_efficacy(retain, test, forget, seed=4)


def test_mia_efficacy_cap_subsamples_the_attack_training_set(monkeypatch):
  rng = np.random.default_rng(2)
  retain, test = rng.uniform(0.9, 1.0, 400), rng.uniform(0.1, 0.6, 300)
  fitted = []
  real_fit = privacy.svm.SVC.fit
  monkeypatch.setattr(privacy.svm.SVC, 'fit', lambda self, x, y: fitted.append(np.bincount(y)) or real_fit(self, x, y))
  forget = rng.uniform(0.1, 0.6, 50)
  assert privacy.mia_efficacy(retain, test, forget, max_per_side=64) > 0.95
  assert privacy.mia_efficacy(retain, test, forget, max_per_side=None) > 0.95
  assert [list(c) for c in fitted] == [[64, 64], [300, 300]]
  with pytest.raises(ValueError, match='max_per_side'):
    privacy.mia_efficacy(retain, test, forget, max_per_side=0)


def test_ulira_by_hand():
  # Unlearned scores {0, 2}: mean 1, unbiased var 2. Retrained {4, 6}: mean 5, var 2. Target score 1:
  # LLR = [-(1-1)^2 / 4] - [-(1-5)^2 / 4] = 4 (the normalisers cancel).
  out = privacy.ulira(np.array([1.0]), np.array([[0.0], [2.0]]), np.array([[4.0], [6.0]]))
  np.testing.assert_allclose(out['llr'], [4.0])
  assert out['predicted_unlearned'].tolist() == [True] and out['fraction_unlearned'] == 1.0


def test_ulira_loo_matches_explicit_refits():
  rng = np.random.default_rng(2)
  u, r = rng.normal(size=(6, 5)), rng.normal(0.5, 1.5, size=(6, 5))
  out = privacy.ulira_loo(u, r)
  for m in (0, 3):
    rest_u, rest_r = np.delete(u, m, axis=0), np.delete(r, m, axis=0)
    np.testing.assert_allclose(out['llr_unlearned'][m], privacy.ulira(u[m], rest_u, rest_r)['llr'])
    np.testing.assert_allclose(out['llr_retrained'][m], privacy.ulira(r[m], rest_u, rest_r)['llr'])


def test_ulira_loo_separated_vs_same_distribution():
  rng = np.random.default_rng(3)
  u = rng.normal(0.0, 1.0, size=(32, 50))
  far = privacy.ulira_loo(u, rng.normal(6.0, 1.0, size=(32, 50)))
  assert far['accuracy'] > 0.99 and far['auc'] > 0.99
  near = privacy.ulira_loo(u, rng.normal(0.0, 1.0, size=(32, 50)))
  assert abs(near['accuracy'] - 0.5) < 0.1 and abs(near['auc'] - 0.5) < 0.1
  # Identical populations: every held-out pair ties -> exactly chance.
  same = privacy.ulira_loo(u, u.copy())
  assert same['accuracy'] == 0.5 and same['auc'] == 0.5
