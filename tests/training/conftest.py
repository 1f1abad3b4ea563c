"""Fixtures shared by the training tests."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _tiny_sam import tiny_sam_model

import medsamkit as msk

N_CXR256 = 9


@pytest.fixture(scope="session")
def cxr256(tmp_path_factory, shared_data) -> msk.MaskFolder:
    """The first nine Shenzhen radiographs and lung masks shrunk to 256 x 256 (LiteMedSAM's input size)."""
    root = tmp_path_factory.mktemp("cxr256")
    source = msk.MaskFolder(shared_data / "cxr-shenzhen")
    for sample in source[:N_CXR256]:
        image, mask = sample.load()
        msk.data.write_image(root / "images" / f"{sample.stem}.png", cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
        small = cv2.resize(mask.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
        msk.write_mask(root / "masks" / f"{sample.stem}.png", small)
    return msk.MaskFolder(root)


@pytest.fixture()
def tiny_sam():
    """A SAM with a tiny random-weight ViT (64 px input, 32 channels): decoder training in milliseconds."""
    from medsamkit.segmenters import _sam

    return msk.SAM(model=tiny_sam_model(_sam._import(_sam._SAM), seed=3))


class BlobSample:
    """A MaskFolder-like sample in memory: a bright rectangle (or nothing) on noise."""

    def __init__(self, stem: str, *, seed: int, empty: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.stem = stem
        self.image = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        self.mask = np.zeros((48, 64), dtype=bool)
        if not empty:
            self.mask[10 + seed % 5 : 34, 12 : 44 + seed % 7] = True
            self.image[self.mask] += 120

    def load(self):
        return self.image, self.mask

    def load_image(self):
        return self.image

    def load_mask(self):
        return self.mask


@pytest.fixture()
def blobs():
    """Six blob samples, the last one without the target."""
    return [BlobSample(f"b{i}", seed=i, empty=i == 5) for i in range(6)]
