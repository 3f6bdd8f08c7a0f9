"""Exponential moving average of a model's weights (Polyak & Juditsky 1992), as kept by latent diffusion.

``LitEma`` stores one shadow buffer per trainable parameter, named after the parameter with the dots removed, plus
``decay`` and ``num_updates`` buffers; checkpoints hold them as ``model_ema.*``. With ``use_num_upates`` (the
original's spelling) the effective decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn


class LitEma(nn.Module):
    """EMA shadow copies of the trainable parameters of ``model``."""

    def __init__(
        self,
        model: nn.Module,  # the model whose trainable parameters are averaged
        decay: float = 0.9999,  # EMA decay per update, in [0, 1]
        use_num_upates: bool = True,  # warm the decay up with the number of updates (original spelling kept)
    ) -> None:
        super().__init__()
        if decay < 0.0 or decay > 1.0:
            raise ValueError(f"decay must be between 0 and 1; got {decay}")

        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))

        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")  # '.' is not allowed in buffer names
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.clone().detach().data)

        self.collected_params: list[torch.Tensor] = []

    def reset_num_updates(self) -> None:
        """Restart the decay warm-up."""
        del self.num_updates
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int))

    def _shadows_of(self, model: nn.Module) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, its shadow buffer) for every trainable parameter of ``model``; KeyError for a trainable
        parameter without a shadow copy or a frozen one with one (the model has changed since the EMA was built)."""
        shadow_params = dict(self.named_buffers())
        for key, param in model.named_parameters():
            if param.requires_grad:
                if key not in self.m_name2s_name:
                    raise KeyError(f"LitEma: parameter {key!r} has no shadow copy; the model has changed since the "
                                   f"EMA was built")
                yield param, shadow_params[self.m_name2s_name[key]]
            elif key in self.m_name2s_name:
                raise KeyError(f"LitEma: parameter {key!r} has a shadow copy but is frozen now")

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA step: shadow -= (1 - decay) * (shadow - param) for every trainable parameter of ``model``."""
        decay = self.decay
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = torch.minimum(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        one_minus_decay = 1.0 - decay

        for param, shadow in self._shadows_of(model):
            if shadow.dtype != param.dtype:
                shadow.data = shadow.data.type_as(param)
            shadow.sub_(one_minus_decay.to(shadow.device, shadow.dtype) * (shadow - param))

    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        for param, shadow in self._shadows_of(model):
            param.data.copy_(shadow.data)

    @contextlib.contextmanager
    def pointed_to(self, model: nn.Module) -> Iterator[None]:
        """``model``'s trainable parameters pointed at the averaged weights inside the block, and back after.

        The same values as ``copy_to`` in the parameters' own memory format, without copying the network's
        weights aside and back (a shadow whose dtype or layout differs, such as a channels-last convolution's,
        is copied into the parameter's format). The block must not change the weights in place: that would
        change the shadows.
        """
        held = []
        try:
            for param, shadow in self._shadows_of(model):
                shadow = shadow.data
                if (shadow.dtype, shadow.shape, shadow.stride(), shadow.device) != \
                        (param.dtype, param.shape, param.stride(), param.device):
                    shadow = torch.empty_like(param.data).copy_(shadow)
                held.append((param, param.data))
                param.data = shadow
            yield
        finally:
            for param, data in held:
                param.data = data

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Save the current parameters, to be restored with ``restore`` after evaluating with the EMA weights."""
        self.collected_params = [param.clone() for param in parameters]

    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by ``store``.

        Useful to validate the model with EMA parameters without affecting the optimization: ``store`` the
        parameters, ``copy_to`` the model, evaluate, then ``restore``.
        """
        for c_param, param in zip(self.collected_params, parameters):
            param.data.copy_(c_param.data)
