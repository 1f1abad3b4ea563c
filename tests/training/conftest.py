"""Fixtures shared by the training tests."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

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
