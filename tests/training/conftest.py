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


@pytest.fixture()
def tiny_sam():
    """A SAM with a tiny random-weight ViT (64 px input, 32 channels): decoder training in milliseconds."""
    from functools import partial

    import torch

    from medsamkit.segmenters import _sam

    m = _sam._import(_sam._SAM).modeling
    torch.manual_seed(3)
    encoder = m.ImageEncoderViT(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2,
        out_chans=32,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=2,
        global_attn_indexes=(1,),
    )
    prompt_encoder = m.PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    transformer = m.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=32, num_heads=2)
    decoder = m.MaskDecoder(
        num_multimask_outputs=3, transformer=transformer, transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32
    )
    model = m.Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder).eval()
    return msk.SAM(model=model)


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
