"""ANFL: the AU relationship-aware node feature learning network (stage 1 of ME-GraphAU / OpenGraphAU).

References:
- Luo, Song, Xie, Shen, Gunes, "Learning Multi-dimensional Edge Feature-based AU Relation Graph
  for Facial Action Unit Recognition", IJCAI 2022 (ME-GraphAU); OpenGraphAU (same authors) trains
  the stage-1 model `MEFARG` on 41 AUs: 27 main AUs plus 14 left/right AUs.
- ECPA uses ANFL's per-AU node features for its AU-level prompts and the confidences for top-K.

Written in this project to match the original's module names and maths, so the official file
`OpenGprahAU-ResNet50_first_stage.pth` ({'epoch', 'state_dict', 'optimizer'}, keys `module.`-prefixed)
loads with an exact key check. The network, top to bottom:

- `backbone`: a ResNet trunk (torchvision names conv1, bn1, layer1..4; no fc). Output: the last
  feature map as tokens, (B, H*W, C_in) (7x7x2048 at 224^2 for ResNet-50).
- `global_linear`: LinearBlock(C_in -> D), D = C_in // 4 (512 for ResNet-50).
- `head.main_class_linears.<i>`: one LinearBlock(D -> D) per main AU (AFG); node feature
  v_i = mean over tokens -> (B, 27, D).
- `head.gnn` (FGG): top-k neighbours by dot-product similarity of the node features (k =
  `neighbor_num`, 4), adjacency A (1 where similarity >= the k-th largest of the row), symmetric
  degree normalisation D^-1/2 A D^-1/2, then  V' = ReLU(V + BN_nodes(A_norm @ V(V) + U(V))),
  with `bnv` a BatchNorm1d over the 27 nodes.
- Confidence (`head.main_sc`, `head.sub_sc`): cosine similarity between the node feature and
  ReLU(class vector), both L2-normalised. Both sides are non-negative, so it lies in [0, 1] and
  is used as the probability directly (the original trains it with an asymmetric BCE on these
  values, no sigmoid). The 14 sub AUs (L/R of AU1, 2, 4, 6, 10, 12, 14) use the node feature of
  their main AU with their own class vectors `sub_sc[2i]` (left) and `sub_sc[2i+1]` (right).

Our 41 node features: the 27 main nodes, then for each sub AU the node feature of its main AU
(the original has no separate sub nodes; the L/R AUs differ only in their class vectors).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoints import check_and_load, load_state_dict_file

AU_IDS = [
    "1", "2", "4", "5", "6", "7", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20",
    "22", "23", "24", "25", "26", "27", "32", "38", "39",
    "L1", "R1", "L2", "R2", "L4", "R4", "L6", "R6", "L10", "R10", "L12", "R12", "L14", "R14",
]
"""OpenGraphAU's 41 AUs in output order: 27 main AUs, then left/right pairs of 7 of them."""

AU_DESCRIPTIONS = [
    "Inner brow raiser", "Outer brow raiser", "Brow lowerer", "Upper lid raiser", "Cheek raiser",
    "Lid tightener", "Nose wrinkler", "Upper lip raiser", "Nasolabial deepener", "Lip corner puller",
    "Sharp lip puller", "Dimpler", "Lip corner depressor", "Lower lip depressor", "Chin raiser",
    "Lip pucker", "Tongue show", "Lip stretcher", "Lip funneler", "Lip tightener", "Lip pressor",
    "Lips part", "Jaw drop", "Mouth stretch", "Lip bite", "Nostril dilator", "Nostril compressor",
    "Left Inner brow raiser", "Right Inner brow raiser", "Left Outer brow raiser", "Right Outer brow raiser",
    "Left Brow lowerer", "Right Brow lowerer", "Left Cheek raiser", "Right Cheek raiser",
    "Left Upper lip raiser", "Right Upper lip raiser", "Left Nasolabial deepener", "Right Nasolabial deepener",
    "Left Dimpler", "Right Dimpler",
]
"""FACS names of `AU_IDS`, same order (as OpenGraphAU prints them)."""

AU_NAMES = [f"AU{i}" for i in AU_IDS]
"""The names stored in the feature store's attributes: AU1 ... AU39, AUL1, AUR1, ... AUR14."""

NUM_MAIN = 27
NUM_SUB = 14
SUB_LIST = (0, 1, 2, 4, 7, 8, 11)
"""Main-node indices the left/right AUs are computed from, exactly as the original's `Head.sub_list`:
AU1, AU2, AU4, AU6, AU10, AU11, AU14. Note the original labels the sixth pair AUL12/AUR12 while its
FACS names say "Nasolabial deepener" (AU11) and the model reads node 8 (AU11); we keep the
original's labels and maths as they are, since the checkpoint was trained that way."""

SUB_SOURCE = [idx for idx in SUB_LIST for _ in range(2)]
"""For each of the 14 sub AUs (L, R, L, R, ...), the main node whose feature it uses."""

from pipeline.extract.networks._normalise import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,F401  (one home)


class LinearBlock(nn.Module):
    """Linear -> BatchNorm1d over channels -> ReLU on token sequences (B, L, C_in) -> (B, L, C_out).
    Keys: fc.*, bn.* (as the original `basic_block.LinearBlock`)."""

    def __init__(self, in_features: int, out_features: int | None = None, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / out_features))
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.drop(x))                              # B, L, C
        return self.relu(self.bn(x.transpose(1, 2))).transpose(1, 2)


def neighbour_adjacency(v: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, C) node features -> (B, N, N) 0/1 adjacency: node i links to every j whose dot product
    with i is >= the k-th largest of row i (ties can add more than k; self-similarity counts)."""
    si = v.detach() @ v.detach().transpose(1, 2)               # B, N, N
    kth = si.topk(k=k, dim=-1, largest=True).values[..., -1:]  # B, N, 1
    return (si >= kth).to(v.dtype)


def normalize_adjacency(a: torch.Tensor) -> torch.Tensor:
    """Symmetric degree normalisation D^-1/2 A D^-1/2 with D = row sums (B, N, N)."""
    d = a.detach().sum(dim=-1).pow(-0.5)                       # B, N
    return d.unsqueeze(-1) * a * d.unsqueeze(-2)


class GNN(nn.Module):
    """FGG graph layer: V' = ReLU(V + BN_nodes(A_norm @ V(V) + U(V))). Keys: U, V, bnv."""

    def __init__(self, in_channels: int, num_nodes: int, neighbor_num: int = 4):
        super().__init__()
        self.neighbor_num = neighbor_num
        self.U = nn.Linear(in_channels, in_channels)
        self.V = nn.Linear(in_channels, in_channels)
        self.bnv = nn.BatchNorm1d(num_nodes)                   # normalises per node, over (batch, channels)
        self.relu = nn.ReLU()
        nn.init.normal_(self.U.weight, 0.0, math.sqrt(2.0 / in_channels))
        nn.init.normal_(self.V.weight, 0.0, math.sqrt(2.0 / in_channels))
        nn.init.ones_(self.bnv.weight)
        nn.init.zeros_(self.bnv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = normalize_adjacency(neighbour_adjacency(x, self.neighbor_num))
        aggregate = a @ self.V(x)                              # B, N, C
        return self.relu(x + self.bnv(aggregate + self.U(x)))


def au_confidence(v: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of node features (B, N, C) with ReLU'd class vectors sc (N, C) -> (B, N)."""
    return (F.normalize(v, p=2, dim=-1) * F.normalize(F.relu(sc), p=2, dim=-1).unsqueeze(0)).sum(-1)


class Head(nn.Module):
    """AFG (per-AU linears + token mean) -> FGG (GNN) -> confidences of 27 main + 14 sub AUs."""

    def __init__(self, in_channels: int, num_main: int = NUM_MAIN, num_sub: int = NUM_SUB, neighbor_num: int = 4):
        super().__init__()
        self.main_class_linears = nn.ModuleList([LinearBlock(in_channels, in_channels) for _ in range(num_main)])
        self.gnn = GNN(in_channels, num_main, neighbor_num=neighbor_num)
        self.main_sc = nn.Parameter(torch.zeros(num_main, in_channels))
        self.sub_sc = nn.Parameter(torch.zeros(num_sub, in_channels))
        nn.init.xavier_uniform_(self.main_sc)
        nn.init.xavier_uniform_(self.sub_sc)
        self.register_buffer("sub_source", torch.tensor(SUB_SOURCE), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: B, L, C tokens -> f_u: B, 27, L, C -> node features B, 27, C
        f_u = torch.stack([layer(x) for layer in self.main_class_linears], dim=1)
        v = self.gnn(f_u.mean(dim=-2))
        v_sub = v[:, self.sub_source]                          # B, 14, C (main node of each L/R AU)
        conf = torch.cat([au_confidence(v, self.main_sc), au_confidence(v_sub, self.sub_sc)], dim=-1)
        return torch.cat([v, v_sub], dim=1), conf              # B, 41, C ; B, 41


class ResNetTrunk(nn.Module):
    """torchvision ResNet without avgpool/fc; returns the last feature map as tokens (B, H*W, C)."""

    def __init__(self, depth: int = 50):
        super().__init__()
        import torchvision

        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50,
               101: torchvision.models.resnet101}[depth](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # B, C, h, w
        return x.flatten(2).transpose(1, 2)                         # B, h*w, C


class ANFL(nn.Module):
    """MEFARG stage 1: x (B, 3, S, S) normalised -> (node features (B, 41, D), confidences (B, 41))."""

    def __init__(self, depth: int = 50, neighbor_num: int = 4):
        super().__init__()
        self.backbone = ResNetTrunk(depth)
        in_channels = self.backbone.num_features
        self.node_dim = in_channels // 4                       # the original's rule for ResNet backbones
        self.global_linear = LinearBlock(in_channels, self.node_dim)
        self.head = Head(self.node_dim, neighbor_num=neighbor_num)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.global_linear(self.backbone(x)))


def anfl_resnet50() -> ANFL:
    """The paper's ANFL: ResNet-50 trunk, 512-d nodes, 4 neighbours (OpenGraphAU stage 1)."""
    return ANFL(depth=50, neighbor_num=4)


def anfl_demo() -> ANFL:
    """Small variant for the demo preset and tests: ResNet-18 trunk, 128-d nodes, same 41 AUs."""
    return ANFL(depth=18, neighbor_num=4)


ANFL_BUILDERS = {"anfl_resnet50": anfl_resnet50, "anfl_demo": anfl_demo}


def anfl_preprocess(faces: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Faces (N, 3, H, W) in [0, 1] -> Resize(size*256/224) -> CenterCrop(size) -> ImageNet norm.
    size=224 is the original's eval transform (Resize 256, CenterCrop 224)."""
    from torchvision.transforms.v2 import functional as TF

    resize = round(size * 256 / 224)
    x = TF.resize(faces, [resize], antialias=True)
    x = TF.center_crop(x, [size, size])
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_anfl(model: ANFL, path: str | Path) -> None:
    """Load the official OpenGraphAU stage-1 checkpoint (or any file with the same key names).
    Unknown, missing or mis-shaped keys raise CheckpointError listing them."""
    check_and_load(model, load_state_dict_file(path), source=str(path))
