"""MoE ops behind one call each: Triton on CUDA tensors, the pure-torch reference elsewhere."""

from switchsweep.kernels.reference import sample_routed_linear_reference

__all__ = ["sample_routed_linear"]


def sample_routed_linear(z, weight, bias, expert_idx, gates):
    """Timestep-routed linear experts: z [B, L, D], weight [M, D, D], bias [M, D], expert_idx [B, k],
    gates [B, k] -> z * (1 + sum_j gates[b, j] * (z[b] @ weight[e_bj] + bias[e_bj]))."""
    return sample_routed_linear_reference(z, weight, bias, expert_idx, gates)
