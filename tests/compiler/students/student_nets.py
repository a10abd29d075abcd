"""Small teachers built in the tests: residual, depthwise and concatenating CNNs, exported to
ONNX with torch and canonicalised like a real teacher, and a KD-ready digits setup."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgec.compiler.canonicalize import canonicalize
from edgec.compiler.loading import load_model

SHAPE = (1, 3, 16, 16)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualNet(nn.Module):
    """Stem, an identity residual block, a projected (strided) residual block, GAP, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.a1, self.a2 = _conv_bn(16, 16), _conv_bn(16, 16)
        self.b1, self.b2 = _conv_bn(16, 32, stride=2), _conv_bn(32, 32)
        self.proj = _conv_bn(16, 32, k=1, stride=2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.a2(torch.relu(self.a1(x))))
        x = torch.relu(self.proj(x) + self.b2(torch.relu(self.b1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DepthwiseNet(nn.Module):
    """MobileNet-style: depthwise-separable block, then an inverted residual with hardswish."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.dw = _conv_bn(16, 16, groups=16)
        self.pw = _conv_bn(16, 32, k=1)
        self.expand = _conv_bn(32, 64, k=1)
        self.dw2 = _conv_bn(64, 64, groups=64)
        self.project = _conv_bn(64, 32, k=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        x = nn.functional.relu6(self.pw(nn.functional.relu6(self.dw(x))))
        y = nn.functional.hardswish(self.dw2(nn.functional.hardswish(self.expand(x))))
        x = x + self.project(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConcatNet(nn.Module):
    """Inception-style: two branches of different widths concatenated, then a conv and a head."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.left = _conv_bn(16, 8, k=1)
        self.right = _conv_bn(16, 12)
        self.after = _conv_bn(20, 24)
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        x = nn.functional.max_pool2d(torch.relu(self.after(x)), 4)
        return self.fc(torch.flatten(x, 1))


class ShuffleNet(nn.Module):
    """A ShuffleNet-style channel shuffle (reshape, transpose, reshape) that hard-codes the
    channel count: pruning the conv before it cannot keep the graph consistent."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.a(x))
        n, _, h, w = x.shape
        x = x.reshape(n, 2, 4, h, w).transpose(1, 2).reshape(n, 8, h, w)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


NETS = {
    "residual": ResidualNet,
    "depthwise": DepthwiseNet,
    "concat": ConcatNet,
    "shuffle": ShuffleNet,
}


def export(net: nn.Module, path: Path, shape: tuple[int, ...] = SHAPE) -> Path:
    """Export ``net`` (eval mode, random but sane BatchNorm statistics) to ``path``."""
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    net.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(shape),),
            buffer,
            input_names=["x"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    path.write_bytes(buffer.getvalue())
    return path


def canonical_teacher(name: str, tmp_path: Path) -> onnx.ModelProto:
    """The named test net, built with seed 0, exported and canonicalised."""
    torch.manual_seed(0)
    path = export(NETS[name](), tmp_path / f"{name}.onnx")
    return canonicalize(load_model(path, {}).proto)


def random_inputs(count: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """``count`` inputs of ``shape`` (batch first), uniform in [0, 1)."""
    return np.random.default_rng(seed).random((count, *shape[1:]), dtype=np.float32)
