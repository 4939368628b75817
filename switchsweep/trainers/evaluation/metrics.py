"""Sample-quality metrics from feature vectors: FID, unbiased KID, Inception Score, precision/recall, and
class accuracy where the feature network classifies the dataset's own classes.

Written here rather than taken from torchmetrics, whose versions of these are tied to its own
feature extractors (torch-fidelity, torchvision): these take any features, numpy or torch. Accuracy
itself is scikit-learn's (`accuracy_score`, already a dependency for the digits).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from torch import Tensor

from switchsweep.config.sweep_schema import ACCURACY_METRIC as ACCURACY

# KID is reported x 10^3, as the literature prints it (the MMD^2 values are small).
KID_SCALE = 1e3
KID = "kid_x1e3"
ArrayLike = np.ndarray | Tensor


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased) of [N, d] features."""
    f = _np64(features)
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues as zero)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance of two Gaussians: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al., FID)."""
    mu1, mu2 = _np64(mu1).ravel(), _np64(mu2).ravel()
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(
            f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    # tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2)) with A = S1^(1/2): both symmetric PSD, so eigh stays
    # exact where sqrtm of the non-symmetric product warns or fails (singular covariances).
    a = _psd_sqrt(s1)
    inner = a @ s2 @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def kernel_inception_distance(
    real: ArrayLike, fake: ArrayLike, subset_size: int = 1000, num_subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, mean and std over random subsets (Binkowski et al.)."""
    x, y = _np64(real), _np64(fake)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError("kernel_inception_distance needs at least 2 real and 2 generated samples")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k_aa = (a @ a.T / d + 1) ** 3
        k_bb = (b @ b.T / d + 1) ** 3
        k_ab = (a @ b.T / d + 1) ** 3
        values[i] = (
            (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
            + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
            - 2 * k_ab.mean()
        )
    return float(values.mean()), float(values.std())


def kid_bootstrap(
    real: ArrayLike, fake: ArrayLike, replicates: int = 50, seed: int = 0, max_samples: int = 1000
) -> np.ndarray:
    """KID's evaluation noise as `replicates` values whose sd is its standard error: the unbiased MMD^2 of
    bootstrap resamples of the generated features, the real side fixed. That sd is what evaluating the
    same model with another `eval.seed` (other labels and initial noise) varies KID by; the spread over
    real subsets (`kernel_inception_distance`'s second value) is not. The resamples depend only on
    `seed` and the sample counts, so two models evaluated alike are resampled alike and their replicates
    pair up: sd(a - b) is the noise of their difference.

    A resample's pairs of one sample with its own copy are left out of the generated-generated mean, as
    the unbiased estimate leaves out i = j. Past `max_samples` generated samples (the kernel matrix grows
    as their square) the bootstrap runs on that many of them, its deviations scaled by
    sqrt(max_samples / n), the standard error's 1/sqrt(n); real ones past 10 x max_samples are
    subsampled for the cross term, whose noise is then far below the generated side's."""
    rng = np.random.default_rng(seed)
    x, y = _np64(real), _np64(fake)
    d, n = x.shape[1], len(y)
    if n < 2:
        raise ValueError("kid_bootstrap needs at least 2 generated samples")
    if n > max_samples:
        y = y[rng.choice(n, max_samples, replace=False)]
    if len(x) > 10 * max_samples:
        x = x[rng.choice(len(x), 10 * max_samples, replace=False)]
    k_yy = (y @ y.T / d + 1) ** 3
    cross = ((x @ y.T / d + 1) ** 3).mean(0)  # per generated sample: its mean kernel value with the real ones
    values = np.empty(replicates)
    for b, idx in enumerate(rng.integers(0, len(y), size=(replicates, len(y)))):
        distinct = idx[:, None] != idx[None, :]
        values[b] = k_yy[np.ix_(idx, idx)][distinct].mean() - 2 * cross[idx].mean()
    return values.mean() + (values - values.mean()) * math.sqrt(len(y) / n)


def fid_influence(real_statistics: tuple[ArrayLike, ArrayLike], fake: ArrayLike) -> np.ndarray:
    """FID's evaluation noise against fixed real statistics (mu_r, S_r) as n values whose sd is its
    standard error: psi_i / sqrt(n), with psi_i = 2 (mu - mu_r).d_i + |d_i|^2 - d_i^T A (A S A)^(-1/2) A d_i,
    d_i = y_i - mu, A = S_r^(1/2), each generated sample's first-order influence on FID (the derivative of
    |mu - mu_r|^2 + tr(S) - 2 tr((A S A)^(1/2)) toward its point mass). Sample i of two models evaluated
    with the same `eval.seed` shares its label and initial noise, so their values pair up as
    `kid_bootstrap`'s do. One eigendecomposition: it costs what FID costs at any feature size."""
    y = _np64(fake)
    mu_r, s_r = _np64(real_statistics[0]).ravel(), np.atleast_2d(_np64(real_statistics[1]))
    mu, s = feature_statistics(y)
    a = _psd_sqrt(s_r)
    inner = a @ s @ a
    w, v = np.linalg.eigh((inner + inner.T) / 2)
    keep = w > w.max() * 1e-10  # the pseudo-inverse square root on the range of A S A
    b = a @ (v[:, keep] / np.sqrt(w[keep])) @ v[:, keep].T @ a
    d = y - mu
    psi = 2 * d @ (mu - mu_r) + np.einsum("ij,ij->i", d, d) - np.einsum("ij,jk,ik->i", d, b, d)
    return psi / math.sqrt(len(y))


def noise_sd(values: ArrayLike) -> float:
    """The standard error carried by `kid_bootstrap` or `fid_influence` values (of one model, or the
    difference of two models' paired values)."""
    return float(np.std(_np64(values), ddof=1))


def class_accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """The share of generated samples that the classifier assigns to the class they were drawn for."""
    return float(accuracy_score(_np64(labels).astype(np.int64), _np64(probs).argmax(1)))


def accuracy_influence(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Class accuracy's evaluation noise as n values c_i / sqrt(n) (c_i: sample i classified as its class),
    whose sd is its standard error; sample i of two models evaluated with the same `eval.seed` shares its
    label and initial noise, so their values pair up as `kid_bootstrap`'s do."""
    hits = (_np64(probs).argmax(1) == _np64(labels).astype(np.int64)).astype(np.float64)
    return hits / math.sqrt(len(hits))


def inception_score(probs: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` chunks (Salimans et al.)."""
    p = _np64(probs)
    splits = max(1, min(splits, len(p)))
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(py, 1e-12, None))), axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each row to its k-th nearest other row."""
    radii = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself at distance 0
    return torch.cat(radii)


def _inside_manifold(points: Tensor, support: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    inside = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], support)
        inside.append((d <= radii[None]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al.): the share of generated samples inside the
    real k-NN manifold, and of real samples inside the generated one."""
    r = torch.as_tensor(_np64(real))
    f = torch.as_tensor(_np64(fake))
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} real and generated samples")
    precision = _inside_manifold(f, r, _kth_neighbour_radii(r, k)).double().mean().item()
    recall = _inside_manifold(r, f, _kth_neighbour_radii(f, k)).double().mean().item()
    return precision, recall


def all_metrics(
    real_features: ArrayLike | None,
    fake_features: ArrayLike,
    fake_probs: ArrayLike,
    *,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 0,
    real_statistics: tuple[ArrayLike, ArrayLike] | None = None,
    fake_labels: ArrayLike | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric of the generated features against the real ones, and the values their evaluation
    noise is read from (`kid_bootstrap`, `fid_influence`, `accuracy_influence`: paired across models
    evaluated alike). `real_statistics` (mu, sigma), as an ADM reference batch ships them, replace the
    real features' for FID; without real features (such a batch without images) KID and
    precision/recall are NaN. KID is x 10^3 (`kid_x1e3`). `fid_se`, `kid_x1e3_se` and
    `class_accuracy_se` are the metrics' evaluation noise (standard errors over the generated samples);
    `kid_x1e3_subset_sd` is KID's spread over real subsets, which is not. `fake_labels`, the classes the
    samples were drawn for, give `class_accuracy`: pass them only where `fake_probs` are over those
    same classes."""
    is_mean, is_std = inception_score(fake_probs)
    real_statistics = real_statistics if real_statistics is not None else feature_statistics(real_features)
    fid = frechet_distance(*real_statistics, *feature_statistics(fake_features))
    noise = {"fid": fid_influence(real_statistics, fake_features)}
    if real_features is None:
        kid = kid_se = kid_subset_sd = precision = recall = float("nan")
    else:
        kid, kid_subset_sd = kernel_inception_distance(real_features, fake_features, kid_subset_size, kid_subsets, seed)
        noise[KID] = KID_SCALE * kid_bootstrap(real_features, fake_features, seed=seed)
        kid, kid_subset_sd, kid_se = KID_SCALE * kid, KID_SCALE * kid_subset_sd, noise_sd(noise[KID])
        precision, recall = precision_recall(real_features, fake_features, pr_k)
    metrics = {
        "fid": fid,
        "fid_se": noise_sd(noise["fid"]),
        KID: kid,
        f"{KID}_se": kid_se,
        f"{KID}_subset_sd": kid_subset_sd,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "precision": precision,
        "recall": recall,
    }
    if fake_labels is not None:
        metrics[ACCURACY] = class_accuracy(fake_probs, fake_labels)
        noise[ACCURACY] = accuracy_influence(fake_probs, fake_labels)
        metrics[f"{ACCURACY}_se"] = noise_sd(noise[ACCURACY])
    return metrics, noise
