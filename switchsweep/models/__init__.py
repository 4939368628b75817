"""DiT backbone, DTR routing, Switch-DiT SMoE and the diffusion prior loss."""

from switchsweep.models.dit import DiT
from switchsweep.models.dtr import DTR
from switchsweep.models.factory import build_model
from switchsweep.models.switch_dit import SwitchDiT

__all__ = ["DiT", "DTR", "SwitchDiT", "build_model"]
