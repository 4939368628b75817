"""Build the configured backbone."""

from __future__ import annotations

from torch import nn

from switchsweep.config.schema import MODEL_SIZES, DataConfig, ModelConfig
from switchsweep.models.dit import DiT
from switchsweep.models.dit_moe import DiTMoE
from switchsweep.models.dtr import DTR
from switchsweep.models.multi_experts import MultiExpertDiT
from switchsweep.models.switch_dit import SwitchDiT


def build_model(model: ModelConfig, data: DataConfig, num_timesteps: int, seed: int = 0) -> nn.Module:
    depth, hidden, heads = MODEL_SIZES[model.size]
    common = dict(
        image_size=data.image_size,
        channels=data.channels,
        num_classes=data.num_classes,
        patch_size=model.patch_size,
        hidden=hidden,
        depth=depth,
        heads=heads,
        mlp_ratio=model.mlp_ratio,
        learn_sigma=model.learn_sigma,
        num_timesteps=num_timesteps,
    )
    if model.name == "dit":
        return DiT(**common)
    if model.name == "dtr":
        return DTR(dtr_alpha=model.dtr_alpha, dtr_beta=model.dtr_beta, **common)
    if model.name == "switch_dit":
        return SwitchDiT(
            num_experts=model.num_experts,
            top_k=model.top_k,
            lambda_dp=model.lambda_dp,
            prior_alpha=model.prior_alpha,
            gating=model.gating,
            integration=model.integration,
            balance_loss=model.balance_loss,
            matching_seed=seed,
            **common,
        )
    if model.name == "dit_moe":
        return DiTMoE(
            num_experts=model.num_experts,
            top_k=model.top_k,
            shared_experts=model.shared_experts,
            expert_balance=model.expert_balance,
            **common,
        )
    if model.name == "multi_experts":
        return MultiExpertDiT(num_intervals=model.num_intervals, **common)
    raise ValueError(f"unknown model {model.name!r}")
