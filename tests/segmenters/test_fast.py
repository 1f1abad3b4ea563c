"""The fast (bfloat16) LiteMedSAM image encoder and its float32 switch.

Correctness only, no timings (``benchmarks/bench_encoder.py`` measures speed): the
rewritten attention equals the original, ``precision="float32"`` is bit-identical to
the reference module, the fast default segments a real chest X-ray like float32, the
numerics are named in ``model_id``, and every fallback (no bfloat16 on the CPU, no or
broken OpenVINO, gradients through the encoder, changed weights) is taken.
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from medsamkit import LiteMedSAM, OracleBoxPrompter, Prompts
from medsamkit.segmenters import _fast
from medsamkit.segmenters._fast import (
    GRAPH_REVISION,
    AcceleratedEncoder,
    accelerate_encoder,
    backend_tag,
    bf16_supported,
    merging_forward,
    prepare_encoder,
    sdpa_attention_forward,
    windowed_block_forward,
    without_graph_revision,
)

SHENZHEN = ("cxr-shenzhen", "CHNCXR_0601_1")


def _read(shared_data: Path, dataset: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(shared_data / dataset / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(shared_data / dataset / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None and mask is not None
    return image, (mask[..., 0] if mask.ndim == 3 else mask) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def _reference_features(model: torch.nn.Module, chw: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model.image_encoder(torch.from_numpy(chw)[None])


@pytest.fixture(scope="module")
def float32_seg(litemedsam):
    """The exact reference path on the session's model (no copy of the weights)."""
    return LiteMedSAM(model=litemedsam.model, precision="float32")


@pytest.fixture(scope="module")
def cxr(litemedsam, float32_seg, shared_data):
    image, mask = _read(shared_data, *SHENZHEN)
    return image, mask, litemedsam.encode(image), float32_seg.encode(image)


# ---------------------------------------------------------------------------------------
# exact rewrites
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_sdpa_attention_equals_the_original(litemedsam, layer) -> None:
    original = litemedsam.model.image_encoder.layers[layer].blocks[0].attn
    patched = copy.deepcopy(original)
    _fast._use_sdpa(patched)
    assert patched.forward.__func__ is sdpa_attention_forward
    n = original.attention_bias_idxs.shape[0]  # window_size ** 2 tokens
    x = torch.randn(3, n, original.norm.normalized_shape[0], generator=torch.Generator().manual_seed(layer))
    with torch.inference_mode():
        expected, got = original(x), patched(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)
    # The biases matter (a wrong mask would not pass): without them the output moves.
    patched._sdpa_bias = torch.zeros_like(patched._sdpa_bias)
    with torch.inference_mode():
        assert (patched(x) - expected).abs().max() > 1e-3


def _tiny_vit_layer(resolution: tuple[int, int], window: int, *, merge: bool, seed: int) -> torch.nn.Module:
    """A small TinyViT stage (the real classes) with random weights, BatchNorm statistics and attention biases."""
    tiny_vit = _fast._tiny_vit()
    layer = tiny_vit.BasicLayer(
        dim=16,
        input_resolution=resolution,
        depth=1,
        num_heads=2,
        window_size=window,
        downsample=tiny_vit.PatchMerging if merge else None,
        out_dim=24,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in layer.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator)
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values * 0.5)
    return layer.eval()


@pytest.mark.parametrize(
    ("resolution", "window", "merge"),
    [((10, 12), 7, True), ((14, 14), 7, False), ((7, 7), 7, True)],
    ids=["padded", "windows-no-padding", "one-window"],
)
def test_layout_rewrite_equals_the_original_on_a_small_tinyvit(resolution, window, merge) -> None:
    layer = _tiny_vit_layer(resolution, window, merge=merge, seed=sum(resolution) + window)
    prepared = prepare_encoder(layer)
    assert all(block.forward.__func__ is windowed_block_forward for block in prepared.blocks)
    assert not merge or prepared.downsample.forward.__func__ is merging_forward
    x = torch.randn(2, resolution[0] * resolution[1], 16, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only wait for each other on a busy machine
    try:
        with torch.inference_mode():
            expected, got = layer(x), prepared(x)
    finally:
        torch.set_num_threads(threads)
    assert got.shape == expected.shape
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_accelerated_tags_name_the_graph_revision() -> None:
    # Encodings of the revision-1 graph were stored under these tags; the rewritten graph's
    # bfloat16/int8 numerics differ in low-order bits, so its tags must differ.
    revision_1 = {"openvino-bf16", "openvino-fp32", "torch-bf16"}
    tags = {backend_tag(b, p) for b in ("openvino", "torch") for p in ("bf16", "fp32")}
    assert GRAPH_REVISION >= 2 and not tags & revision_1
    assert {without_graph_revision(t) for t in tags} >= revision_1
    int8 = backend_tag("openvino", "int8", "0123456789abcdef")
    assert int8.endswith(f"-g{GRAPH_REVISION}-0123456789abcdef")
    assert without_graph_revision(f":{int8}+lora:abc").endswith("-0123456789abcdef+lora:abc")
    assert f"-g{GRAPH_REVISION}" not in without_graph_revision(f":{int8}+lora:abc")
    assert backend_tag("float32", "fp32") == ""


@pytest.mark.real_model
def test_a_new_graph_revision_changes_model_id_and_ir_key_but_not_encoder_id(litemedsam, monkeypatch) -> None:
    seg = LiteMedSAM(model=litemedsam.model)
    if seg.model_id == seg._base_id:
        pytest.skip("no accelerated encoder on this machine")
    prepared = prepare_encoder(litemedsam.model.image_encoder)
    key = _fast._ir_key(prepared, (1, 3, 256, 256)) if _fast.openvino_available() else None
    model_id, encoder_id = seg.model_id, seg.encoder_id
    assert not model_id.endswith(("-bf16", "-fp32"))  # not a revision-1 id (whose cached encodings differ)
    assert encoder_id.endswith(":" + without_graph_revision(model_id.rsplit(":", 1)[1]))
    monkeypatch.setattr(_fast, "GRAPH_REVISION", GRAPH_REVISION + 1)
    later = LiteMedSAM(model=litemedsam.model)
    assert later.model_id != model_id and later.encoder_id == encoder_id
    if key is not None:
        assert _fast._ir_key(prepared, (1, 3, 256, 256)) != key


@pytest.mark.real_model
def test_prepared_float32_encoder_equals_the_reference(litemedsam) -> None:
    encoder = litemedsam.model.image_encoder
    prepared = prepare_encoder(encoder)
    assert not any(type(m).__name__ == "Conv2d_BN" for m in prepared.modules())  # BatchNorm folded
    blocks = [m for m in prepared.modules() if type(m).__name__ == "TinyViTBlock"]
    assert len(blocks) == 10 and all(b.forward.__func__ is windowed_block_forward for b in blocks)
    assert any(type(m).__name__ == "Conv2d_BN" for m in encoder.modules())  # the original is unchanged
    assert not any(p.requires_grad for p in prepared.parameters())
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = encoder(x), prepared(x)
    rel = float((got - expected).norm() / expected.norm())
    assert rel < 1e-5, rel


# ---------------------------------------------------------------------------------------
# the float32 switch
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_float32_switch_is_bit_identical_to_the_reference(litemedsam, float32_seg, cxr) -> None:
    image, _, _, enc32 = cxr
    assert float32_seg.encoder_backend == "float32" and float32_seg._encoder() is None
    chw, _ = float32_seg.preprocess(image)
    assert torch.equal(enc32.features, _reference_features(litemedsam.model, chw))
    assert enc32.features.dtype == torch.float32


@pytest.mark.real_model
def test_bad_precision(litemedsam) -> None:
    with pytest.raises(ValueError, match=r"^precision: expected 'fast', 'float32' or 'int8', got 'bf16'"):
        LiteMedSAM(model=litemedsam.model, precision="bf16")
    with pytest.raises(ValueError, match=r"^precision: "):
        accelerate_encoder(litemedsam.model.image_encoder, precision="float16")
    with pytest.raises(ValueError, match=r"^backend: "):
        accelerate_encoder(litemedsam.model.image_encoder, backend="tensorrt")


# ---------------------------------------------------------------------------------------
# the fast default
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_fast_is_the_default_where_the_cpu_has_bf16(litemedsam) -> None:
    assert litemedsam.precision == "fast" and litemedsam.params()["precision"] == "fast"
    if bf16_supported():
        assert litemedsam.encoder_backend in ("openvino", "torch")
        assert litemedsam._fast.precision == "bf16"
    else:
        assert litemedsam.encoder_backend == "float32"


@pytest.mark.real_model
def test_fast_default_segments_a_real_cxr_like_float32(litemedsam, float32_seg, cxr) -> None:
    image, mask, enc_fast, enc32 = cxr
    assert enc_fast.features.dtype == torch.float32 and enc_fast.features.shape == (1, 256, 64, 64)
    assert enc_fast.model_id == litemedsam.model_id and enc_fast.input_size_hw == enc32.input_size_hw
    rel = float((enc_fast.features - enc32.features).norm() / enc32.features.norm())
    assert rel < 0.1, f"relative embedding difference {rel:.3g}"  # bfloat16: about 0.04
    prompts = OracleBoxPrompter()(image, target=mask)
    fast = litemedsam.decode(enc_fast, prompts).probabilities > 0.5
    exact = float32_seg.decode(enc32, prompts).probabilities > 0.5
    for i in range(prompts.n):
        assert _dice(fast[i], exact[i]) > 0.99
    assert _dice(fast.any(axis=0), mask) > 0.93


@pytest.mark.real_model
def test_model_id_names_the_precision(litemedsam, float32_seg) -> None:
    if litemedsam.encoder_backend == "float32":
        assert litemedsam.model_id == float32_seg.model_id
        return
    # Same weights, other numerics: another model id, so cached encodings never mix.
    assert float32_seg.model_id == f"litemedsam:module-{id(litemedsam.model):x}"
    tag = litemedsam._fast.tag
    assert tag == f"{litemedsam.encoder_backend}-bf16-g{GRAPH_REVISION}"
    bundled32 = LiteMedSAM(precision="float32")
    assert litemedsam.model_id == f"{bundled32.model_id}:{tag}"
    assert bundled32.params() == {**litemedsam.params(), "precision": "float32"}
    assert float32_seg.params() == {"module": float32_seg.model_id, "precision": "float32"}
    with pytest.raises(ValueError, match=r"^encoding: "):
        float32_seg.decode(litemedsam.encode(np.zeros((32, 32), np.uint8)), Prompts(box_xyxy=[[0, 0, 10, 10]]))


# ---------------------------------------------------------------------------------------
# fallbacks
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_no_bf16_falls_back_to_exact_float32(litemedsam, cxr, monkeypatch) -> None:
    monkeypatch.setattr(_fast, "bf16_supported", lambda: False)
    seg = LiteMedSAM(model=litemedsam.model)  # precision="fast" by default
    assert seg.precision == "fast" and seg.encoder_backend == "float32"
    assert seg.model_id == f"litemedsam:module-{id(litemedsam.model):x}"  # the float32 id
    image = cxr[0]
    chw, _ = seg.preprocess(image)
    assert torch.equal(seg.encode(image).features, _reference_features(litemedsam.model, chw))
    # An explicit bf16 request says why it is not honoured.
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        accelerated = accelerate_encoder(litemedsam.model.image_encoder, backend="torch")
    assert accelerated.exact and accelerated.tag == ""


@pytest.mark.real_model
def test_cpu_flags_decide_bf16(monkeypatch) -> None:
    monkeypatch.setattr(_fast, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not bf16_supported()
    monkeypatch.setattr(_fast, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not bf16_supported()


@pytest.fixture(scope="module")
def torch_bf16(litemedsam):
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    return accelerate_encoder(litemedsam.model.image_encoder, backend="torch")


@pytest.mark.real_model
def test_torch_bf16_backend(litemedsam, torch_bf16, cxr) -> None:
    assert torch_bf16.backend == "torch" and torch_bf16.tag == f"torch-bf16-g{GRAPH_REVISION}"
    image, _, _, enc32 = cxr
    chw, _ = litemedsam.preprocess(image)
    out = torch_bf16(torch.from_numpy(chw)[None])
    assert out.dtype == torch.float32 and out.shape == enc32.features.shape and out.is_contiguous()
    rel = float((out - enc32.features).norm() / enc32.features.norm())
    assert rel < 0.1, rel


@pytest.mark.real_model
def test_without_openvino_auto_uses_torch(litemedsam, monkeypatch) -> None:
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    monkeypatch.setattr(_fast, "openvino_available", lambda: False)
    monkeypatch.setattr(_fast, "_build_torch_bf16", lambda encoder, example, adapter=None: lambda x: x)
    assert accelerate_encoder(litemedsam.model.image_encoder).backend == "torch"


@pytest.mark.real_model
def test_broken_openvino_falls_back_with_a_warning(litemedsam, monkeypatch) -> None:
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")

    def broken(*args, **kwargs):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(_fast, "openvino_available", lambda: True)
    monkeypatch.setattr(_fast, "_build_openvino", broken)
    monkeypatch.setattr(_fast, "_build_torch_bf16", lambda encoder, example, adapter=None: lambda x: x)
    with pytest.warns(RuntimeWarning, match="openvino backend failed .*conversion failed"):
        accelerated = accelerate_encoder(litemedsam.model.image_encoder)
    assert accelerated.backend == "torch"
    monkeypatch.setattr(_fast, "_build_torch_bf16", broken)
    with pytest.warns(RuntimeWarning) as records:
        assert accelerate_encoder(litemedsam.model.image_encoder).exact
    messages = [str(r.message) for r in records]
    assert any("openvino backend failed" in m for m in messages) and any("torch backend failed" in m for m in messages)


@pytest.mark.real_model
def test_the_fast_path_leaves_autograd_through_the_encoder_alone(litemedsam, cxr) -> None:
    # The accelerated encoder is a separate copy: the module keeps its parameters, its
    # requires_grad flags and its gradients (LoRA trains through model.image_encoder).
    encoder = litemedsam.model.image_encoder
    before = [(p, p.requires_grad) for p in encoder.parameters()]
    litemedsam.encode(cxr[0])
    assert [(p, p.requires_grad) for p in encoder.parameters()] == before
    assert any(type(m).__name__ == "Conv2d_BN" for m in encoder.modules())
    trainable = copy.deepcopy(encoder)
    trainable.requires_grad_(False)
    qkv = trainable.layers[1].blocks[0].attn.qkv.weight
    qkv.requires_grad_(True)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    trainable(x).square().mean().backward()
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0
    # Fine-tuning swaps an adapted, trainable copy into the model while it trains:
    # encode then runs that module in float32, exactly.
    # (Not monkeypatch: it would delete the submodule on undo.)
    litemedsam.model.image_encoder = trainable
    try:
        assert litemedsam._encoder() is None
        chw, _ = litemedsam.preprocess(cxr[0])
        features = litemedsam.encode(cxr[0]).features
    finally:
        litemedsam.model.image_encoder = encoder
    with torch.inference_mode():
        assert torch.equal(features, trainable(torch.from_numpy(chw)[None]))
    if litemedsam._planned != "float32":
        assert litemedsam._encoder() is litemedsam._fast  # put back: the same fast encoder again


@pytest.mark.real_model
def test_changed_weights_are_noticed(litemedsam) -> None:
    encoder = copy.deepcopy(litemedsam.model.image_encoder)
    accelerated = AcceleratedEncoder(encoder, "torch", "bf16", lambda x: x, (1, 3, 256, 256))
    assert accelerated.usable_for(encoder) and not accelerated.usable_for(litemedsam.model.image_encoder)
    encoder.train()
    encoder.eval()  # re-creates the attention's derived bias buffers: weights are the same
    assert accelerated.usable_for(encoder)
    with torch.no_grad():
        encoder.neck[0].weight.mul_(1.01)
    assert not accelerated.usable_for(encoder)
    fresh = AcceleratedEncoder(encoder, "torch", "bf16", lambda x: x, (1, 3, 256, 256))
    encoder.load_state_dict(copy.deepcopy(encoder.state_dict()))
    assert not fresh.usable_for(encoder)


@pytest.mark.real_model
def test_changed_weights_rebuild_the_fast_encoder(litemedsam, monkeypatch) -> None:
    built = []

    def build(self):
        built.append(1)
        return AcceleratedEncoder(self._encoder_source, "torch", "bf16", lambda x: x[:, :1], (1, 3, 256, 256))

    monkeypatch.setattr(LiteMedSAM, "_build_fast_encoder", build)
    monkeypatch.setattr(_fast, "planned_backends", lambda encoder, **kw: ["torch", "float32"])
    seg = LiteMedSAM(model=copy.deepcopy(litemedsam.model))
    assert seg.model_id.endswith(f":torch-bf16-g{GRAPH_REVISION}") and built == []  # built on first use
    first = seg._encoder()
    assert first is seg._fast and len(built) == 1
    assert seg._encoder() is first and len(built) == 1
    with torch.no_grad():
        seg.model.image_encoder.neck[0].weight.add_(0.0)  # an in-place change
    assert seg._encoder() is not first and len(built) == 2
    assert seg.model_id.endswith(f":torch-bf16-g{GRAPH_REVISION}")


@pytest.mark.real_model
def test_a_failed_build_renames_the_model(litemedsam, monkeypatch) -> None:
    monkeypatch.setattr(_fast, "planned_backends", lambda encoder, **kw: ["openvino", "float32"])
    monkeypatch.setattr(
        LiteMedSAM,
        "_build_fast_encoder",
        lambda self: AcceleratedEncoder(self._encoder_source, "float32", "fp32", self._encoder_source, (1, 3, 256, 256)),
    )
    seg = LiteMedSAM(model=litemedsam.model)
    base = f"litemedsam:module-{id(litemedsam.model):x}"
    assert seg.model_id == f"{base}:openvino-bf16-g{GRAPH_REVISION}"
    seg.model_id = f"litemedsam:0123456789abcdef:openvino-bf16-g{GRAPH_REVISION}+lora:abc"  # as load_lora sets it
    assert seg._encoder() is None and seg.encoder_backend == "float32"
    assert seg.model_id == "litemedsam:0123456789abcdef+lora:abc"
    assert base not in seg.model_id


@pytest.mark.real_model
def test_openvino_conversion_uses_the_telemetry_stub(monkeypatch):
    pytest.importorskip("openvino")
    import importlib

    from medsamkit.segmenters import _fast

    convert_impl = importlib.import_module("openvino.tools.ovc.convert_impl")
    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    before = convert_impl.tm
    with _fast._no_openvino_telemetry():
        assert convert_impl.tm is stub
    assert convert_impl.tm is before


# ---------------------------------------------------------------------------------------
# bfloat16 mask decoder (inference with the fast encoder)
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_fast_decode_runs_a_bf16_decoder_close_to_float32(litemedsam, float32_seg, cxr) -> None:
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    image, mask, enc_fast, _ = cxr
    expected = "openvino" if litemedsam.encoder_backend == "openvino" else "torch"
    assert litemedsam.decoder_backend == expected and float32_seg.decoder_backend == "float32"
    prompts = OracleBoxPrompter()(image, target=mask)
    fast = litemedsam.decode(enc_fast, prompts).probabilities
    assert next(litemedsam.model.mask_decoder.parameters()).dtype == torch.float32  # the module is untouched
    assert (litemedsam._openvino_decoder._run is not None) == (expected == "openvino")
    # Same embedding, float32 decoder: only the decoder's numerics differ.
    enc_same = type(enc_fast)(enc_fast.features, enc_fast.size_hw, enc_fast.input_size_hw, float32_seg.model_id)
    exact = float32_seg.decode(enc_same, prompts).probabilities
    assert not np.array_equal(fast, exact)
    assert _dice(fast.max(axis=0) > 0.5, exact.max(axis=0) > 0.5) > 0.995


@pytest.mark.real_model
@pytest.mark.parametrize("prompt", ["boxes", "points"])
def test_openvino_decoder_is_as_close_to_float32_as_the_bf16_copy(litemedsam, float32_seg, cxr, prompt) -> None:
    pytest.importorskip("openvino")
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    features = cxr[2].features
    if prompt == "boxes":  # three prompts of two tokens
        boxes, points = torch.tensor([[30.0, 40.0, 120.0, 220.0], [130.0, 40.0, 230.0, 220.0], [60, 60, 200, 200]]), None
    else:  # two prompts of three point tokens (two points and the padding point)
        boxes, points = (
            None,
            (torch.tensor([[[80.0, 120.0], [90.0, 60.0]], [[180.0, 120.0], [20.0, 20.0]]]), torch.tensor([[1, 0], [1, 1]])),
        )
    model = litemedsam.model
    with torch.inference_mode():
        reference, iou_reference = float32_seg.decode_logits(features, boxes, points)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        run = _fast.OpenVINODecoder().of(model.mask_decoder, tuple(features.shape[1:]))
        logits, iou = run(features, pe, sparse, dense)
        b = torch.bfloat16
        copy16 = _fast.Bf16Copy().of(model.mask_decoder)
        torch16, _ = copy16(
            image_embeddings=features.to(b),
            image_pe=pe.to(b),
            sparse_prompt_embeddings=sparse.to(b),
            dense_prompt_embeddings=dense.to(b),
            multimask_output=False,
        )
    assert logits.shape == reference.shape and iou.shape == iou_reference.shape and logits.dtype == torch.float32

    def rel(x: torch.Tensor) -> float:
        return float((x.float() - reference).norm() / reference.norm())

    assert 0 < rel(logits) < max(2 * rel(torch16), 0.01), (rel(logits), rel(torch16))
    assert float(((logits > 0) == (reference > 0)).float().mean()) > 0.999
    torch.testing.assert_close(iou, iou_reference, atol=0.02, rtol=0)


@pytest.mark.real_model
def test_a_failed_openvino_decoder_falls_back_to_the_bf16_copy(litemedsam, cxr, monkeypatch) -> None:
    seg = LiteMedSAM(model=litemedsam.model)
    if seg.decoder_backend != "openvino":
        pytest.skip("the OpenVINO decoder is not planned here")
    digest = seg.decoder_digest()

    def broken(*args, **kwargs):
        raise RuntimeError("no decoder today")

    monkeypatch.setattr(_fast, "_build_openvino_decoder", broken)
    boxes = torch.tensor([[30.0, 40.0, 120.0, 220.0]])
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="fast decoder: OpenVINO failed"):
        logits, _ = seg.decode_logits(cxr[2].features, boxes, None)
    assert seg.decoder_backend == "torch" and logits.dtype == torch.float32
    assert seg.decoder_digest() != digest  # logits cached from the OpenVINO decoder are not served now


@pytest.mark.real_model
def test_a_fresh_conversion_computes_what_the_cached_one_does(litemedsam, cxr, tmp_path, monkeypatch) -> None:
    """The first process converts and stores the model, later ones read it: both must give
    the same bytes (a model fresh from OpenVINO's converter compiled to other bf16 results
    than the same model read back, so a pipeline rebuilt from its config decoded differently)."""
    pytest.importorskip("openvino")
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    monkeypatch.setenv("MEDSAMKIT_OPENVINO_CACHE", str(tmp_path))
    model = litemedsam.model
    features = cxr[2].features
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=torch.tensor([[30.0, 40.0, 120.0, 220.0]]), masks=None)
        pe = model.prompt_encoder.get_dense_pe()
    fresh = _fast.OpenVINODecoder().of(model.mask_decoder, (256, 64, 64))
    assert len(list(tmp_path.glob("*.xml"))) == 1
    cached = _fast.OpenVINODecoder().of(model.mask_decoder, (256, 64, 64))
    assert torch.equal(fresh(features, pe, sparse, dense)[0], cached(features, pe, sparse, dense)[0])


@pytest.mark.real_model
def test_openvino_decoder_follows_weight_changes(litemedsam, tmp_path, monkeypatch) -> None:
    pytest.importorskip("openvino")
    if not bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    monkeypatch.setenv("MEDSAMKIT_OPENVINO_CACHE", str(tmp_path))
    decoder = copy.deepcopy(litemedsam.model.mask_decoder)
    decoders = _fast.OpenVINODecoder()
    first = decoders.of(decoder, (256, 64, 64))
    assert decoders.of(decoder, (256, 64, 64)) is first
    with torch.no_grad():
        decoder.iou_prediction_head.layers[-1].bias.add_(1.0)  # an optimiser step changes the weights in place
    second = decoders.of(decoder, (256, 64, 64))
    assert second is not first
    x = (torch.zeros(1, 256, 64, 64), torch.zeros(1, 256, 64, 64), torch.zeros(1, 2, 256), torch.zeros(1, 256, 64, 64))
    assert torch.allclose(second(*x)[1], first(*x)[1] + 1.0, atol=0.05)  # the new bias is compiled in
    assert len(list(tmp_path.glob("*.xml"))) == 2  # both converted graphs kept on disk


@pytest.mark.real_model
def test_bf16_decoder_copy_follows_weight_changes(litemedsam) -> None:
    decoder = copy.deepcopy(litemedsam.model.mask_decoder)
    copies = _fast.Bf16Copy()
    first = copies.of(decoder)
    assert copies.of(decoder) is first
    with torch.no_grad():
        decoder.iou_token.weight.add_(1.0)  # an optimiser step changes the weights in place
    second = copies.of(decoder)
    assert second is not first
    assert torch.equal(second.iou_token.weight, decoder.iou_token.weight.to(torch.bfloat16))


@pytest.mark.real_model
def test_openvino_fast_encoder_sends_nothing_and_writes_nothing_under_home(run_offline):
    """Issue 10: importing OpenVINO (and converting on a cache miss) posted a usage event and
    wrote ``~/intel/openvino_ga_cid``. Now nothing tries to connect and nothing lands in HOME
    outside medsamkit's own cache folder."""
    pytest.importorskip("openvino")
    code = """
import torch
from medsamkit.segmenters._fast import accelerate_encoder
module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
fast = accelerate_encoder(module, precision="fp32", backend="openvino", image_size=16)
x = torch.rand(1, 3, 16, 16)
with torch.no_grad():
    close = torch.allclose(fast(x), module(x), atol=1e-5)
RESULT = {"backend": fast.backend, "close": bool(close)}
"""
    report = run_offline(code, env={"MEDSAMKIT_OPENVINO_CACHE": ""})
    assert report["result"] == {"backend": "openvino", "close": True}  # the OpenVINO path really ran
    assert report["events"] == []
    assert not [f for f in report["home_files"] if f.startswith("intel")], report["home_files"]
    assert all(f.startswith(".cache/medsamkit/") for f in report["home_files"]), report["home_files"]
