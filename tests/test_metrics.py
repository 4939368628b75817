import math

import numpy as np
import pytest
import scipy.linalg
import torch

from switchsweep.trainers.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
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
