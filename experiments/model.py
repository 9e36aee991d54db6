"""A small AlexNet-style CNN for 28x28 MNIST (~0.32M parameters, all dense so every gradient is compressed)."""
from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    """x float32 [B, 1, 28, 28] → logits float32 [B, 10].

    conv5x5(1→32)-relu-maxpool2, conv5x5(32→64)-relu-maxpool2, fc(1024→256)-relu, fc(256→10). No dropout: its
    random masks would have to be replayed identically by the simulation and by the real processes.
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), hidden: int = 256):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class MnistMLP(nn.Module):
    """x float32 [B, 1, 28, 28] → logits float32 [B, 10]: fc(784→256)-relu, fc(256→128)-relu, fc(128→10).

    Another model family on the same data (no weight sharing, no pooling): its gradients are outer products of
    activations and back-propagated errors, with the exact zeros of inactive ReLUs and of the image's blank border.
    """

    def __init__(self, hidden: tuple[int, int] = (256, 128)):
        super().__init__()
        h1, h2 = hidden
        self.fc1 = nn.Linear(784, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))
