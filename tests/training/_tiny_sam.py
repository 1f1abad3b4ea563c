"""A tiny random-weight SAM / HQ-SAM (32 channels, 2 ViT blocks) for the training tests."""

from __future__ import annotations

from functools import partial

import torch


def tiny_sam_model(pkg, *, img_size=64, seed=0):
    """The model of ``pkg`` (segment_anything or its HQ twin), seeded, in eval mode."""
    m = pkg.modeling
    torch.manual_seed(seed)
    encoder = m.ImageEncoderViT(
        img_size=img_size,
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
    grid = img_size // 16
    prompt_encoder = m.PromptEncoder(
        embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
    )
    transformer = m.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=32, num_heads=2)
    common = dict(num_multimask_outputs=3, transformer=transformer, transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32)
    decoder = m.MaskDecoderHQ(vit_dim=32, **common) if pkg.__name__.endswith("_hq") else m.MaskDecoder(**common)
    return m.Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder).eval()
