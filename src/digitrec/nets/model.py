"""The networks. Each returns logits (B, 10) for a batch (B, 1, 28, 28) scaled to [0, 1].

Every network divides its logits by its own `temperature` (a buffer saved with the weights; 1 until
the end of training fits one: nets/temperature.py), so every path that loads a model (evaluate, predict,
submit, serve, the ONNX export, ensembles) shows calibrated probabilities without code of its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.config import TrainConfig
from .augment import TTA_VIEWS, view_grid


class _ByteMaskDrop(torch.autograd.Function):
    """x * mask / (1 - p), the mask drawn from random bytes (one 32-bit draw per 4 values)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int32).random_(-2**31, 2**31)
        random_bytes = words.view(torch.uint8)[:x.numel()].as_strided(x.shape, x.stride())  # x's memory order
        scale = (random_bytes >= round(256 * p)).to(x.dtype).mul_(1 / (1 - p))  # kept with probability 1 - p
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class ByteMaskDropout(nn.Dropout):
    """nn.Dropout with the same semantics and random source (torch's default generator), ~5x cheaper on a CPU.

    PyTorch's CPU dropout draws one Bernoulli sample per value and multiplies by a bool mask, two slow
    passes (10 ms for a (86, 32, 14, 14) batch on 2 cores, 3x the 3x3 conv that follows). Here each random
    byte is compared with 256p, so p must be a multiple of 1/256 (the reference's 0.25 and 0.5 are);
    other rates, and tensors on a GPU (whose fused dropout is fast already), use nn.Dropout.
    `train.fit` seeds the default generators for the run and restores the caller's afterwards.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        cheap = x.device.type == "cpu" and 0 < self.p < 1 and (256 * self.p) % 1 == 0 and dense
        if not self.training or not cheap or self.inplace:
            return super().forward(x)
        return _ByteMaskDrop.apply(x, self.p)


class Classifier(nn.Module):
    """A network whose logits are divided by `temperature`, a scalar buffer in its state dict.

    Temperature scaling (Guo et al., 2017) changes no argmax, only how sure the probabilities are.
    Weights saved before temperatures existed load with temperature 1.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "temperature", torch.ones(()))  # a file from before calibration
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ReferenceNet(Classifier):
    """The reference Keras CNN, 887,530 parameters, padding 'same'.

    conv32 5x5 -> conv32 5x5 -> pool -> drop .25 -> conv64 3x3 -> conv64 3x3 -> pool -> drop .25
    -> dense 256 -> drop .5 -> dense 10.
    The ReLU after the second conv of a stage runs after its pool: max-pooling commutes with ReLU,
    so the outputs and gradients are the reference's, with the ReLU over 4x fewer values.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2), nn.ReLU(inplace=True), ByteMaskDropout(0.25),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.MaxPool2d(2), nn.ReLU(inplace=True), ByteMaskDropout(0.25),  # (B, 64, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 3136)
            nn.Linear(64 * 7 * 7, 256), nn.ReLU(inplace=True), ByteMaskDropout(0.5),
            nn.Linear(256, 10),
        )
        # Keras defaults: Glorot-uniform kernels, zero biases.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)) / self.temperature


class Deskew(nn.Module):
    """Straighten each digit's slant and move its centre of mass to the image centre.

    The slant is the ink's shear: cov(x, y) / var(y) of the pixel coordinates weighted by intensity,
    as in the classic moment deskewing of MNIST. It lives in the model, so training, evaluation,
    real images, the server and the ONNX export (GridSample, opset 16+) all see the same inputs.
    """

    def __init__(self, size: int = 28):
        super().__init__()
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) * 2 / size - 1  # grid_sample's [-1, 1]
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("xs", xs, persistent=False)  # (H, W): no weights, nothing in the state dict
        self.register_buffer("ys", ys, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) ink >= 0 on a 0 background
        mass = x.sum((2, 3), keepdim=True).clamp_min(1e-6)  # (B, 1, 1, 1)
        mean_x = (x * self.xs).sum((2, 3), keepdim=True) / mass
        mean_y = (x * self.ys).sum((2, 3), keepdim=True) / mass
        dy = self.ys - mean_y
        var_y = (x * dy * dy).sum((2, 3), keepdim=True) / mass
        cov_xy = (x * (self.xs - mean_x) * dy).sum((2, 3), keepdim=True) / mass
        slant = cov_xy / var_y.clamp_min(1e-6)  # a blank image has none
        # output pixel (x, y) reads the input at (mean_x + x + slant * y, mean_y + y)
        x_in = mean_x + self.xs + slant * self.ys  # (B, 1, H, W)
        y_in = (mean_y + self.ys).expand_as(x_in)
        grid = torch.stack([x_in, y_in], -1).squeeze(1)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def conv_pool_bn(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    """conv -> 2x2 max-pool -> batch norm -> ReLU: normalising after the pool costs 4x less on a CPU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.MaxPool2d(2),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FastNet(Classifier):
    """A compact batch-normalised CNN for the `fast` preset: few FLOPs, downsampling at every stage.

    `width` sets the channels of the three stages (w, 2w, 4w).
    """

    def __init__(self, width: int = 32, deskew: bool = False):
        super().__init__()
        w = width
        self.deskew = Deskew() if deskew else nn.Identity()
        self.features = nn.Sequential(
            conv_pool_bn(1, w, 5),  # (B, w, 14, 14)
            conv_pool_bn(w, 2 * w),  # (B, 2w, 7, 7)
            conv_pool_bn(2 * w, 4 * w),  # (B, 4w, 3, 3)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 9, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.deskew(x))) / self.temperature


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> batch norm -> ReLU, resolution kept."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class BestNet(Classifier):
    """FastNet with a second 3x3 conv in the last two stages, for the `best` preset.

    Twice the depth at 2.8x the FLOPs of FastNet of the same width (width 24: 25 MFLOP/image forward).
    """

    def __init__(self, width: int = 24, deskew: bool = False):
        super().__init__()
        w = width
        self.deskew = Deskew() if deskew else nn.Identity()
        self.features = nn.Sequential(
            conv_pool_bn(1, w, 5),  # (B, w, 14, 14)
            conv_bn(w, 2 * w), conv_pool_bn(2 * w, 2 * w),  # (B, 2w, 7, 7)
            conv_bn(2 * w, 4 * w), conv_pool_bn(4 * w, 4 * w),  # (B, 4w, 3, 3)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 9, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.deskew(x))) / self.temperature


class Ensemble(Classifier):
    """Trained networks voting by averaged probabilities.

    Returns log(mean_k softmax(member_k(x))), a valid logits tensor (B, 10): its softmax is the
    members' mean probability. Averaging probabilities, not logits, keeps one over-confident
    member from outvoting the rest. Each member applies its own temperature; the ensemble's own
    `temperature` then rescales the average (train.combine_runs fits it when the members share a
    calibration hold-out, else it stays 1).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)  # state_dict keys "members.<i>.<name>"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([member(x).log_softmax(1) for member in self.members])  # (K, B, 10)
        return (torch.logsumexp(log_probs, 0) - math.log(len(self.members))) / self.temperature


class TTA(Classifier):
    """`net` trained on single images, predicting by test-time augmentation: in eval mode it returns
    log(mean_v softmax(net(view_v(x)))) over `views` (augment.TTA_VIEWS: small shifts and rotations).
    In training mode it is `net`. Living in the model, the views reach every path that loads it
    (evaluate, predict, submit, serve, the ONNX export); the temperature fitted at the end of
    training is this module's, on the averaged probabilities. One pass per view: a batch of 7x the images would
    outgrow the CPU's caches (`fast` on 10,000 images: 4.8 s so, 1.7 s a view at a time).
    """

    def __init__(self, net: nn.Module, views=TTA_VIEWS, size: int = 28):
        super().__init__()
        self.net = net
        grids = torch.cat([view_grid(view, [1, 1, size, size]) for view in views])
        self.register_buffer("grids", grids, persistent=False)  # (V, H, W, 2): no weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.net(x)
        log_probs = []
        for grid in self.grids.unbind(0):
            view = F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                                 align_corners=False).contiguous(memory_format=torch.channels_last)
            log_probs.append(self.net(view).log_softmax(1))
        return (torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))) / self.temperature


def build_model(cfg: TrainConfig) -> nn.Module:
    """The untrained network `cfg.model` names (reference, fast or best), deskewing its inputs if `cfg.deskew`
    and predicting by test-time augmentation if `cfg.tta`.

    >>> build_model(make_config("seed"))  # doctest: +SKIP
    ReferenceNet(...)
    """
    if cfg.model == "reference":
        net = ReferenceNet()
    elif cfg.model == "fast":
        net = FastNet(cfg.width, cfg.deskew)
    elif cfg.model == "best":
        net = BestNet(cfg.width, cfg.deskew)
    else:
        raise ValueError(f"unknown model {cfg.model!r}")
    return TTA(net) if cfg.tta else net


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
