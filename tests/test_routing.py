import math

import pytest
import torch

from switchsweep.models.routing import dtr_mask, gate_selection_mask, prior_mask, topk_gates


def _window_reference(T, width, total, alpha):
    rows = []
    for t in range(T):
        s = round((t / (T - 1)) ** alpha * (total - width))
        rows.append([1.0 if s <= c < s + width else 0.0 for c in range(total)])
    return torch.tensor(rows)


@pytest.mark.parametrize(
    "N,M,k,alpha", [(6, 3, 2, 4.0), (4, 4, 1, 1.0), (12, 3, 2, 2.0), (5, 2, 2, 8.0), (3, 6, 4, 4.0)]
)
def test_prior_mask_matches_formula(N, M, k, alpha):
    T = 200
    got = prior_mask(N, M, k, alpha=alpha, num_timesteps=T)
    assert got.shape == (T, N * M) and got.dtype == torch.float32
    assert torch.equal(got, _window_reference(T, N * k, N * M, alpha))
    assert torch.all(got.sum(1) == N * k)


@pytest.mark.parametrize("N,M,k", [(6, 3, 2), (4, 4, 1), (4, 4, 4), (12, 3, 1), (5, 4, 3), (28, 3, 2), (2, 8, 5)])
def test_units_on_at_every_timestep_are_the_shared_experts(N, M, k):
    w = prior_mask(N, M, k, num_timesteps=1000)
    always_on = int(w.min(0).values.sum())
    assert always_on == max(N * (2 * k - M), 0)


def test_prior_mask_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="k=4"):
        prior_mask(2, 3, 4)


def test_dtr_mask_slides_with_t():
    C, beta, alpha, T = 100, 0.8, 4.0, 1000
    m = dtr_mask(C, beta=beta, alpha=alpha, num_timesteps=T)
    width = math.floor(beta * C)
    assert m.shape == (T, C)
    assert torch.all(m.sum(1) == width)
    starts = m.argmax(1)
    assert starts[0] == 0 and starts[-1] == C - width  # first channels at t=0, last at t=T-1
    assert torch.all(starts[1:] >= starts[:-1])  # moves one way only
    for t in (0, 250, 500, 750, 999):
        assert starts[t] == round((t / (T - 1)) ** alpha * (C - width))
    # contiguous window: ones exactly at [start, start + width)
    assert torch.equal(m, _window_reference(T, width, C, alpha))


def test_topk_gates_are_not_renormalised_and_mask_marks_them():
    probs = torch.softmax(torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]]), -1)  # [1, N=2, M=3]
    vals, idx = topk_gates(probs, 2)
    assert torch.allclose(vals, probs.gather(-1, idx))
    assert vals.sum(-1).lt(1).all()
    assert gate_selection_mask(probs, 2).tolist() == [[1, 1, 0, 0, 1, 1]]


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.5])
def test_dtr_mask_refuses_a_width_outside_0_1(beta):
    with pytest.raises(ValueError, match=f"beta={beta} must be in \\(0, 1\\]"):
        dtr_mask(10, beta=beta)


def test_noisy_logits_add_softplus_scaled_gaussian_noise():
    from switchsweep.models.routing import noisy_logits

    clean, noise = torch.randn(4, 3), torch.randn(4, 3)
    got = noisy_logits(clean, noise, torch.Generator().manual_seed(7))
    eps = torch.randn((4, 3), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, clean + eps * torch.log1p(torch.exp(noise)))
