"""Adam and the plateau learning-rate schedule in plain tensor operations.

The same updates as ``torch.optim.Adam`` (default betas and eps, no weight decay) and
``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode ``max``, relative threshold), written out
because constructing any ``torch.optim`` optimiser imports ``torch._dynamo``: 4-5 s on a quiet
2-core machine, more than a whole 20,000-cell fit takes. The state (step count, learning rate,
moments) lives in tensors on the parameters' device, so the step can be recorded in a CUDA graph.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, as ``torch.optim.Adam(params, lr)``."""

    def __init__(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        device = self.params[0].device
        self.lr = torch.tensor(float(lr), dtype=torch.float64, device=device)
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.t = torch.zeros((), dtype=torch.float64, device=device)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in live]
        grads = [p.grad for p in params]
        m, v = [self.m[i] for i in live], [self.v[i] for i in live]
        self.t += 1
        torch._foreach_lerp_(m, grads, 1.0 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - self.beta2)
        bias1 = 1.0 - torch.pow(self.beta1, self.t)
        bias2_sqrt = torch.sqrt(1.0 - torch.pow(self.beta2, self.t))
        step_size = (self.lr / bias1).float()
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias2_sqrt.float())
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, step_size)
        torch._foreach_sub_(params, update)


class ReduceOnPlateau:
    """Multiply the learning rate by ``factor`` when the monitored value has not improved by
    more than ``threshold`` (relative) for more than ``patience`` epochs."""

    def __init__(self, optimizer: Adam, factor: float = 0.5, patience: int = 3, threshold: float = 1e-4,
                 min_lr: float = 0.0, eps: float = 1e-8) -> None:
        self.optimizer, self.factor, self.patience = optimizer, factor, patience
        self.threshold, self.min_lr, self.eps = threshold, min_lr, eps
        self.best, self.bad_epochs = -math.inf, 0
        self.lr = float(optimizer.lr)

    def step(self, value: float) -> None:
        if value > self.best * (1.0 + self.threshold):  # torch's rule for mode max, relative threshold
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
                self.optimizer.lr.fill_(new_lr)
            self.bad_epochs = 0
