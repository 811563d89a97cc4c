"""Models used across the book: fully connected nets (more are added by the chapters that use them).

ResNets come from torchvision.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, bias: bool = True) -> nn.Sequential:
    """A fully connected net ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers.

    Defined in book/intro.md. ``mlp([64, 32, 32, 10])`` is the digits MLP of the limit chapters.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"sizes: expected at least two positive integers, got {sizes!r}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(int(a), int(b), bias=bias))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class CriteoMLP(nn.Module):
    """The SA++ paper's Criteo model: 39 features x ``embed_dim``-dim embeddings -> 390 -> 400 -> 400 -> 400 -> logit.

    Defined in book/sapp_criteo.md.

    Input: ``(integers, categoricals)`` as produced by :class:`pruninglab.data.criteo.CriteoBatches`
    (float ``[B, 13]`` preprocessed integers, int64 ``[B, 26]`` hashed bucket indices, 0 = missing).
    Each of the 26 categorical columns has its own table of ``num_buckets`` rows (stored as one
    ``nn.Embedding`` with per-column offsets). The paper does not say how the 13 numerical features
    are embedded; here [our choice] feature ``i`` with value ``x_i`` becomes ``x_i * v_i + b_i``
    with learned 10-dim vectors ``v_i, b_i`` (a per-feature linear embedding), so all 39 features
    enter the first dense layer on equal footing. The output is one logit per row (use
    ``binary_cross_entropy_with_logits``). The paper prunes only ``dense[0]`` (the 390 -> 400 layer).

    ``sparse_embedding=True`` makes the table's gradient a sparse tensor holding only the rows a batch
    touched (at full scale ~0.2 M of 26 M rows), to be stepped with
    :class:`pruninglab.optim.DenseSparseAdam`; the table is then left out of DDP's dense all-reduce
    (which would send 1 GB of mostly zeros each step) and that optimizer all-reduces the sparse rows.
    """

    def __init__(
        self,
        num_buckets: int = 1000,
        embed_dim: int = 10,
        hidden: Sequence[int] = (400, 400, 400),
        num_integer: int = 13,
        num_categorical: int = 26,
        sparse_embedding: bool = False,
    ):
        super().__init__()
        for name, val, low in (("num_buckets", num_buckets, 2), ("embed_dim", embed_dim, 1),
                               ("num_integer", num_integer, 0), ("num_categorical", num_categorical, 0)):
            if isinstance(val, bool) or int(val) != val or val < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {val!r}")
        self.num_buckets, self.embed_dim = int(num_buckets), int(embed_dim)
        self.num_integer, self.num_categorical = int(num_integer), int(num_categorical)
        self.int_scale = nn.Parameter(torch.randn(self.num_integer, self.embed_dim) * 0.05)
        self.int_shift = nn.Parameter(torch.zeros(self.num_integer, self.embed_dim))
        self.embedding = nn.Embedding(self.num_categorical * self.num_buckets, self.embed_dim,
                                      sparse=bool(sparse_embedding))
        nn.init.normal_(self.embedding.weight, std=0.05)
        if sparse_embedding:
            # Read by DistributedDataParallel: these parameters are not all-reduced by it.
            self._ddp_params_and_buffers_to_ignore = ["embedding.weight"]
        self.register_buffer(
            "offsets", torch.arange(self.num_categorical, dtype=torch.long) * self.num_buckets, persistent=False
        )
        width = (self.num_integer + self.num_categorical) * self.embed_dim
        self.dense = mlp([width, *hidden, 1])

    def forward(self, features):
        integers, categoricals = features
        ints = integers.unsqueeze(-1) * self.int_scale + self.int_shift  # [B, 13, d]
        cats = self.embedding(categoricals + self.offsets)  # [B, 26, d]
        x = torch.cat((ints.to(cats.dtype), cats), 1).flatten(1)
        return self.dense(x).squeeze(-1)


# --------------------------------------------------------------------------- the pruning-limit paper's models
# Zhang et al. (NeurIPS 2024); architectures as described in book/limit_experiments.md. Prunable
# (conv/linear) weight counts for 10 classes: FC5 3.88 M, FC12 7.26 M, AlexNet 46.8 M, VGG16-BN
# 14.7 M; for 100 classes: ResNet18 11.2 M, ResNet50 23.7 M.

FC5_WIDTHS = (1000, 600, 300, 100)
FC12_WIDTHS = (1000, 900, 800, 750, 700, 650, 600, 500, 400, 200, 100)


def fc_net(hidden: Sequence[int], num_classes: int = 10, in_features: int = 3 * 32 * 32) -> nn.Sequential:
    """A fully connected ReLU net on flattened images: ``in_features -> hidden... -> num_classes``.
    """
    return nn.Sequential(nn.Flatten(), *mlp([in_features, *hidden, num_classes]))


def fc5(num_classes: int = 10, in_features: int = 3 * 32 * 32) -> nn.Sequential:
    """The paper's FC5: 3072-1000-600-300-100-10 (3.88 M weights). Defined in book/limit_experiments.md."""
    return fc_net(FC5_WIDTHS, num_classes, in_features)


def fc12(num_classes: int = 10, in_features: int = 3 * 32 * 32) -> nn.Sequential:
    """The paper's FC12: 3072-1000-900-800-750-700-650-600-500-400-200-100-10 (7.26 M weights).
    """
    return fc_net(FC12_WIDTHS, num_classes, in_features)


class AlexNetCifar(nn.Module):
    """AlexNet for 32x32 inputs upsampled x7 to 224x224: 5 conv layers (96-256-384-384-256) + FC 6400-4096-4096-classes.

    The unpadded stride-4 11x11 first convolution and three 3x3/2
    max-pools give a 256x5x5 = 6400 feature map, matching the paper's 6400-wide first FC layer and
    its 46.8 M prunable weights. The upsampling mode and dropout are not given in our source
    ([our choice]: nearest-neighbour, no dropout by default).
    """

    def __init__(self, num_classes: int = 10, upsample: int = 7, dropout: float = 0.0):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=upsample, mode="nearest") if upsample != 1 else nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(256 * 5 * 5, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(self.upsample(x)))


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn_cifar(num_classes: int = 10) -> nn.Sequential:
    """VGG16 with batch norm for 32x32 inputs, 13 conv layers and a single 512 -> classes head (14.7 M weights).
    """
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes))


def _cifar_resnet(arch: str, num_classes: int) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    # The usual CIFAR stem: a 3x3 stride-1 convolution and no max-pool, so 32x32 inputs keep 4x4 maps at the end.
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def resnet18_cifar(num_classes: int = 100) -> nn.Module:
    """torchvision's ResNet18 with a CIFAR stem (3x3 stride-1 conv, no max-pool): 11.2 M weights at 100 classes.
    """
    return _cifar_resnet("resnet18", num_classes)


def resnet50_cifar(num_classes: int = 100) -> nn.Module:
    """torchvision's ResNet50 with a CIFAR stem (3x3 stride-1 conv, no max-pool): 23.7 M weights at 100 classes.
    """
    return _cifar_resnet("resnet50", num_classes)


# --------------------------------------------------------------------------- name -> builder


def _torchvision_resnet(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)

    build.__doc__ = f"torchvision's {arch} (ImageNet stem, random init) with ``num_classes`` outputs."
    return build


#: Every named model of the experiments: name -> builder (keyword arguments as the builder's).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "fc_net": fc_net,
    "fc5": fc5,
    "fc12": fc12,
    "alexnet_cifar": AlexNetCifar,
    "vgg16_bn_cifar": vgg16_bn_cifar,
    "resnet18_cifar": resnet18_cifar,
    "resnet50_cifar": resnet50_cifar,
    "resnet18": _torchvision_resnet("resnet18"),
    "resnet34": _torchvision_resnet("resnet34"),
    "resnet50": _torchvision_resnet("resnet50"),
    "criteo_mlp": CriteoMLP,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """The model registered as ``name`` in :data:`MODELS`, built with ``kwargs``.

    ``build_model("resnet50", num_classes=1000)``,
    ``build_model("fc_net", hidden=[32, 32], num_classes=10, in_features=64)``.
    """
    if name not in MODELS:
        raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)
