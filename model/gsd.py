"""GSD module (paper III-C): global dependency attention (Eq. 4-6), the per-AU classifier (Eq. 7) and
the Table VII alternatives Add+MLP / Cat+MLP. GDL (Eq. 8) is in model/losses.py."""
from __future__ import annotations

import math

import torch
from torch import nn

from model.lsi import PerAUMLP


class GDA(nn.Module):
    """Global dependency attention over the N AU features (docs/protocol.md reading)."""

    def __init__(self, n_aus: int, d: int):
        super().__init__()
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_k = nn.Linear(d, d, bias=False)
        self.w_v = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(n_aus * n_aus, n_aus)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """F~ (B, N, d) -> F_G (B, d), W_d (B, N), A (B, N, N)."""
        q, k = self.w_q(f), self.w_k(f)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(f.shape[-1]), dim=-1)  # Eq. 4
        w_d = torch.softmax(torch.relu(self.fc(a.flatten(1))), dim=-1)  # Eq. 5
        f_g = (w_d.unsqueeze(1) @ self.w_v(f)).squeeze(1)  # Eq. 6: W_d F~ W^V
        return f_g, w_d, a


class AddMLP(nn.Module):
    """Table VII "Add+MLP": F_G = MLP(sum_n F~_n)."""

    def __init__(self, n_aus: int, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, f: torch.Tensor):
        return self.mlp(f.sum(dim=1)), None, None


class CatMLP(nn.Module):
    """Table VII "Cat+MLP": F_G = MLP([F~_1, ..., F~_N])."""

    def __init__(self, n_aus: int, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(n_aus * d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, f: torch.Tensor):
        return self.mlp(f.flatten(1)), None, None


DEPENDENCY = {"gda": GDA, "add_mlp": AddMLP, "cat_mlp": CatMLP}


class GSD(nn.Module):
    """Final AU features F_G + F~_n (Eq. 7's input); `dependency` picks GDA / Add+MLP / Cat+MLP."""

    def __init__(self, n_aus: int, d: int, dependency: str):
        super().__init__()
        self.dep = DEPENDENCY[dependency](n_aus, d)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """F~ (B, N, d) -> final AU features (B, N, d), W_d (B, N) or None (no GDL without GDA)."""
        f_g, w_d, _ = self.dep(f)
        return f + f_g.unsqueeze(1), w_d


class AUHeads(nn.Module):
    """Eq. 7: P_n = softmax(MLP_n(final AU feature)), one 2-way MLP per AU (stacked: all AUs in one batched
    matmul per layer); returns the logits."""

    def __init__(self, n_aus: int, d: int, hidden: int):
        super().__init__()
        self.mlps = PerAUMLP(n_aus, d, hidden, 2)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, N, d) -> logits (B, N, 2); softmax over the last axis gives P_n."""
        return self.mlps(f.transpose(0, 1)).transpose(0, 1)
