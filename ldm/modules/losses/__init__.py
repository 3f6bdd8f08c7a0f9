"""First-stage training losses: LPIPS + PatchGAN with a KL (`LPIPSWithDiscriminator`) or VQ
(`VQLPIPSWithDiscriminator`) regularizer. Configs name ``ldm.modules.losses.LPIPSWithDiscriminator``."""
from ldm.modules.losses.contperceptual import DummyLoss, LPIPSWithDiscriminator
from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

__all__ = ["DummyLoss", "LPIPSWithDiscriminator", "VQLPIPSWithDiscriminator"]
