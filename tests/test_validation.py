"""Tests for medsamkit._validation: image/mask/probability validators and error messages."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit._validation import as_image, as_mask, check_probability, describe


class TestAsImage:
    @pytest.mark.parametrize(
        "image",
        [
            np.zeros((4, 5), np.uint8),
            np.zeros((4, 5), np.uint16),
            np.zeros((4, 5), np.int32),
            np.zeros((4, 5), np.float32),
            np.zeros((4, 5), bool),
            np.zeros((4, 5, 1), np.uint8),
            np.zeros((4, 5, 3), np.uint8),
            np.zeros((4, 5, 4), np.float64),
            np.zeros((2, 2)),
        ],
    )
    def test_accepts_supported_shapes_and_dtypes(self, image):
        out = as_image(image)
        assert isinstance(out, np.ndarray)
        assert out.shape == image.shape
        assert out.dtype == image.dtype

    def test_no_copy_for_arrays(self):
        image = np.arange(20, dtype=np.uint8).reshape(4, 5)
        assert as_image(image) is image

    def test_nested_lists_are_converted(self):
        out = as_image([[0, 1], [2, 3]])
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, [[0, 1], [2, 3]])

    def test_none_is_type_error_naming_parameter(self):
        with pytest.raises(TypeError, match=r"^image: .*got None"):
            as_image(None)

    def test_custom_name_in_message(self):
        with pytest.raises(TypeError, match=r"^picture: "):
            as_image(None, name="picture")

    def test_string_dtype_rejected(self):
        with pytest.raises(TypeError, match=r"image: expected a numeric dtype"):
            as_image(np.array([["a", "b"], ["c", "d"]]))

    def test_object_dtype_rejected(self):
        with pytest.raises(TypeError, match=r"image: expected a numeric dtype"):
            as_image(np.array([[object(), 1], [2, 3]], dtype=object))

    def test_complex_rejected(self):
        with pytest.raises(TypeError, match=r"image: expected a real-valued image"):
            as_image(np.zeros((4, 4), np.complex64))

    @pytest.mark.parametrize("shape", [(3, 32, 32), (32, 32, 2), (32, 32, 5)])
    def test_wrong_channel_count_or_channel_first(self, shape):
        with pytest.raises(ValueError, match=r"image: .*channels last.*got shape"):
            as_image(np.zeros(shape, np.uint8))

    @pytest.mark.parametrize("shape", [(10,), (2, 3, 3, 3), ()])
    def test_wrong_ndim(self, shape):
        with pytest.raises(ValueError, match=r"image: expected shape \(H, W\)"):
            as_image(np.zeros(shape, np.uint8))

    @pytest.mark.parametrize("shape", [(1, 10), (10, 1), (0, 5), (1, 1, 3)])
    def test_too_small(self, shape):
        with pytest.raises(ValueError, match=r"image: expected at least 2x2 pixels"):
            as_image(np.zeros(shape, np.uint8))

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_float(self, bad):
        image = np.zeros((4, 4), np.float32)
        image[1, 2] = bad
        with pytest.raises(ValueError, match=r"image: expected finite values"):
            as_image(image)


class TestAsMask:
    def test_nonzero_is_foreground(self):
        mask = np.array([[0, 255], [3, 0]], dtype=np.uint8)
        out = as_mask(mask)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, [[False, True], [True, False]])

    def test_float_mask(self):
        out = as_mask(np.array([[0.0, 0.2], [1.0, -1.0]]))
        np.testing.assert_array_equal(out, [[False, True], [True, True]])

    def test_trailing_singleton_channel_squeezed(self):
        mask = np.zeros((3, 4, 1), np.uint8)
        mask[1, 2, 0] = 1
        out = as_mask(mask)
        assert out.shape == (3, 4)
        assert out[1, 2] and out.sum() == 1

    def test_size_mismatch_names_parameter_and_shapes(self):
        with pytest.raises(ValueError, match=r"target: expected shape \(4, 5\).*got shape \(5, 4\)"):
            as_mask(np.zeros((5, 4)), size_hw=(4, 5))

    def test_size_match_passes(self):
        assert as_mask(np.zeros((4, 5)), size_hw=(4, 5)).shape == (4, 5)

    @pytest.mark.parametrize("shape", [(4,), (4, 4, 3), (2, 4, 4)])
    def test_wrong_shape(self, shape):
        with pytest.raises(ValueError, match=r"^mask: expected shape \(H, W\)"):
            as_mask(np.zeros(shape), name="mask")

    def test_nan_rejected(self):
        mask = np.zeros((3, 3))
        mask[0, 0] = np.nan
        with pytest.raises(ValueError, match=r"target: expected a binary mask, got NaN"):
            as_mask(mask)

    def test_none_and_strings_rejected(self):
        with pytest.raises(TypeError, match=r"^target: .*got None"):
            as_mask(None)
        with pytest.raises(TypeError, match=r"^target: expected a numeric or bool mask"):
            as_mask(np.array([["x", "y"]]))


class TestCheckProbability:
    @pytest.mark.parametrize("value", [0, 1, 0.0, 0.25, 1.0, np.float32(0.5), np.int64(1)])
    def test_valid_returns_float(self, value):
        out = check_probability(value, name="threshold")
        assert type(out) is float
        assert out == float(value)

    @pytest.mark.parametrize("value", [-0.01, 1.5, 2, float("nan"), float("inf")])
    def test_out_of_range(self, value):
        with pytest.raises(ValueError, match=r"^threshold: expected a number in \[0, 1\]"):
            check_probability(value, name="threshold")

    @pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5]])
    def test_not_a_number(self, value):
        with pytest.raises(TypeError, match=r"^threshold: expected a number in \[0, 1\]"):
            check_probability(value, name="threshold")


class TestDescribe:
    def test_array(self):
        assert describe(np.zeros((2, 3), np.uint16)) == "array of shape (2, 3) and dtype uint16"

    def test_shaped_non_array(self):
        class Shaped:
            shape = [4, 5]

        assert describe(Shaped()) == "Shaped of shape (4, 5)"

    def test_other_values_and_truncation(self):
        assert describe(3) == "int 3"
        assert describe("abc") == "str 'abc'"
        assert len(describe("x" * 1000)) == 120


def test_a_path_instead_of_an_image_says_to_read_it(tmp_path):
    """Issue 10: ``segmenter.encode("img.png")`` said only "expected a numeric dtype ... got <U7"."""
    from pathlib import Path

    for value in ("img.png", Path("img.png")):
        with pytest.raises(TypeError, match=r"image: .*got the path .*img\.png.*medsamkit\.read_image\(path\)"):
            as_image(value)
