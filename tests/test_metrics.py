import math

import numpy as np
import pytest
import scipy.linalg
import torch

from switchsweep.trainers.evaluation.metrics import (
    accuracy_influence,
    all_metrics,
    class_accuracy,
    feature_statistics,
    fid_from_features,
    fid_influence,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    kid_bootstrap,
    noise_sd,
    precision_recall,
)


def test_frechet_distance_of_1d_gaussians_is_the_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_frechet_distance_matches_the_sqrtm_formula_and_accepts_torch():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    got = frechet_distance(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert isinstance(got, float) and got == pytest.approx(ref, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_even_when_singular():
    x = np.random.default_rng(1).normal(size=(50, 80))  # fewer samples than dimensions: singular covariance
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-4)  # trace terms are ~80
    mu, sigma = feature_statistics(x)
    assert mu.shape == (80,) and sigma.shape == (80, 80)


def test_kid_is_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kernel_inception_distance(x, y, subset_size=7, num_subsets=3)
    assert mean == pytest.approx(xx + yy - 2 * xy) and std == pytest.approx(0.0, abs=1e-9)


def test_kid_is_zero_within_its_std_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    mean, std = kernel_inception_distance(a, b, subset_size=100, num_subsets=50)
    assert abs(mean) < 3 * std
    shifted, _ = kernel_inception_distance(a, b + 1.0, subset_size=100, num_subsets=50)
    assert shifted > 20 * std


def test_inception_score_closed_forms():
    confident_uniform = np.eye(10)[np.arange(1000) % 10]
    mean, std = inception_score(confident_uniform, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)
    one_class = np.eye(10)[np.zeros(100, dtype=int)]
    assert inception_score(one_class)[0] == pytest.approx(1.0)
    unsure = np.full((100, 10), 0.1)
    assert inception_score(unsure)[0] == pytest.approx(1.0)


def test_precision_recall_identical_and_disjoint_sets():
    x = np.random.default_rng(4).normal(size=(200, 5))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    p, r = precision_recall(x, x + 100.0, k=3)
    assert p == 0.0 and r == 0.0
    # half of the generated set collapsed far away: precision drops to about 1/2, recall stays high
    fake = np.concatenate([x[:100], x[100:] + 100.0])
    p, r = precision_recall(x, fake, k=3)
    assert p == pytest.approx(0.5, abs=0.05) and r > 0.4
    assert math.isclose(precision_recall(torch.tensor(x), torch.tensor(x))[0], 1.0)


def _draws(seed: int, n: int = 250, d: int = 16) -> np.ndarray:
    """Generated features of one evaluation: n draws from a fixed model that is off the real data."""
    r = np.random.default_rng(seed)
    return 0.3 + 1.3 * r.standard_normal((n, d)) * np.linspace(0.5, 1.5, d)


def test_evaluation_noise_estimates_match_the_spread_over_evaluations():
    # At the sweep's sizes (250 generated, the digits' 1,797 real, KID over 20 subsets of 250): the spread of
    # KID and FID over 60 independent evaluations of one model against each estimate from one evaluation.
    real = np.random.default_rng(0).standard_normal((1797, 16))
    stats = feature_statistics(real)
    fakes = [_draws(100 + s) for s in range(60)]
    kid_sd = np.std([kernel_inception_distance(real, f, 250, 20, seed=s)[0] for s, f in enumerate(fakes)], ddof=1)
    fid_sd = np.std([frechet_distance(*stats, *feature_statistics(f)) for f in fakes], ddof=1)
    kid_x1e3_se = np.mean([noise_sd(kid_bootstrap(real, f, seed=s)) for s, f in enumerate(fakes[:8])])
    fid_se = np.mean([noise_sd(fid_influence(stats, f)) for f in fakes[:8]])
    assert 1 / 1.35 < kid_x1e3_se / kid_sd < 1.35, (kid_x1e3_se, kid_sd)  # measured: 1.03
    assert 1 / 1.35 < fid_se / fid_sd < 1.35, (fid_se, fid_sd)  # measured: 1.09
    # The spread over real subsets is another quantity: here 0.40 of the evaluation noise.
    subset_sd = np.mean([kernel_inception_distance(real, f, 250, 20, seed=s)[1] for s, f in enumerate(fakes[:8])])
    assert subset_sd < 0.6 * kid_sd


def test_fid_influence_is_the_delta_method_on_a_shifted_mean():
    # Same covariance, shifted mean: FID's only first-order term is 2 (mu - mu_r).d, whose sd over the
    # samples is 2 |mu - mu_r| sd(y) per dimension: a closed form.
    r = np.random.default_rng(3)
    y = r.standard_normal((4000, 3)) + np.array([1.0, 0.0, 0.0])
    se = noise_sd(fid_influence((np.zeros(3), np.eye(3)), y))
    assert se == pytest.approx(2 * 1.0 * 1.0 / math.sqrt(4000), rel=0.08)


def test_all_metrics_report_the_evaluation_noise_and_the_subset_spread_under_their_names():
    real, fake = np.random.default_rng(0).standard_normal((300, 8)), _draws(1, n=120, d=8)
    m, noise = all_metrics(real, fake, np.full((120, 10), 0.1), kid_subset_size=100, kid_subsets=5)
    assert {"kid_x1e3", "kid_x1e3_se", "kid_x1e3_subset_sd", "fid", "fid_se"} <= set(m) and "kid_std" not in m
    assert (
        m["kid_x1e3_se"] == pytest.approx(1e3 * noise_sd(kid_bootstrap(real, fake)))
        and m["fid_se"] == noise_sd(noise["fid"]) > 0
    )
    # KID in one unit, x 10^3, with its noise values in the same unit
    raw, raw_sd = kernel_inception_distance(real, fake, 100, 5)
    assert (m["kid_x1e3"], m["kid_x1e3_subset_sd"]) == pytest.approx((1e3 * raw, 1e3 * raw_sd))
    assert noise_sd(noise["kid_x1e3"]) == pytest.approx(m["kid_x1e3_se"])
    assert "class_accuracy" not in m  # no labels: the feature network classifies nothing of this data


def test_class_accuracy_and_its_noise_on_hand_built_probabilities():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probs = np.eye(4)[[0, 1, 2, 0, 0, 1, 3, 3]]  # 6 of 8 drawn as their own class
    assert class_accuracy(probs, labels) == 0.75
    values = accuracy_influence(probs, labels)
    assert values.sum() * math.sqrt(8) / 8 == pytest.approx(0.75)
    # its noise is the binomial standard error sqrt(p (1 - p) / n) with the n - 1 denominator
    assert noise_sd(values) == pytest.approx(math.sqrt(0.75 * 0.25 / 8 * 8 / 7))
    m, noise = all_metrics(
        np.random.default_rng(0).standard_normal((20, 4)),
        np.random.default_rng(1).standard_normal((8, 4)),
        probs,
        kid_subset_size=8,
        kid_subsets=2,
        fake_labels=labels,
    )
    assert m["class_accuracy"] == 0.75 and m["class_accuracy_se"] == pytest.approx(noise_sd(values))
    # paired: a model that gets one more sample right differs by exactly that sample
    better = probs.copy()
    better[3] = np.eye(4)[3]
    diff = accuracy_influence(better, labels) - values
    assert diff.sum() * math.sqrt(8) / 8 == pytest.approx(1 / 8)


def test_kid_bootstrap_on_many_samples_scales_a_subsample_by_one_over_sqrt_n():
    real = np.random.default_rng(0).standard_normal((1797, 16))
    big = _draws(7, n=1000)
    full = noise_sd(kid_bootstrap(real, big, max_samples=1000))
    capped = noise_sd(kid_bootstrap(real, big, max_samples=250))
    assert 0.7 < capped / full < 1.4  # the same quantity from a quarter of the samples
