"""Readers of real formats and writers of small files in those formats (no model imports).

Names are imported from their modules on first use.
"""
from .. import _install_lazy

__all__ = _install_lazy(__name__, {
    **dict.fromkeys(["TensorSplit", "digits_split"], ".digits"),
    **dict.fromkeys(["cifar_split", "CifarSplit", "TensorBatches", "write_cifar"], ".cifar"),
    **dict.fromkeys(["CriteoBatches", "write_synthetic_criteo"], ".criteo"),
    **dict.fromkeys(["imagefolder_datasets", "make_imagefolder"], ".imagenet"),
    **dict.fromkeys(["load_image", "lfw_faces", "photo_crops", "image_folder_split"], ".images"),
    **dict.fromkeys(["load_sdf_npz", "write_sdf_npz", "sdf_split"], ".sdf"),
})
