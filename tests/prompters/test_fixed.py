"""Tests for FixedPrompter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsamkit import Pipeline, Prompts
from medsamkit._registry import build_prompter, component_config
from medsamkit.prompters import FixedPrompter
from medsamkit.testing import FakeSegmenter


def test_returns_the_same_prompts_for_any_image():
    prompts = Prompts(box_xyxy=[[2, 3, 10, 12]])
    prompter = FixedPrompter(prompts)
    assert prompter.requires_target is False
    assert prompter(np.zeros((20, 20))) is prompts
    assert prompter(np.ones((50, 40, 3), np.uint8), target=np.ones((50, 40))) is prompts


def test_rejects_non_prompts():
    with pytest.raises(TypeError, match=r"^prompts: expected Prompts, got list"):
        FixedPrompter([[0, 0, 1, 1]])


def test_params_rebuild_the_same_prompts_through_the_registry():
    prompts = Prompts(box_xyxy=[[1.5, 2, 8, 9]], points_xy=[[[4, 5], [6, 7]]], point_labels=[[1, 0]])
    config = json.loads(json.dumps(component_config(FixedPrompter(prompts))))
    assert config["name"] == "fixed"
    rebuilt = build_prompter(config["name"], **config["params"])
    assert isinstance(rebuilt, FixedPrompter)
    out = rebuilt(np.zeros((10, 10)))
    np.testing.assert_array_equal(out.box_xyxy, prompts.box_xyxy)
    np.testing.assert_array_equal(out.points_xy, prompts.points_xy)
    np.testing.assert_array_equal(out.point_labels, [[1, 0]])


def test_empty_prompts_config_round_trip():
    config = json.loads(json.dumps(component_config(FixedPrompter(Prompts.empty()))))
    assert build_prompter("fixed", **config["params"])(np.zeros((4, 4))).n == 0


def test_box_segmented_by_pipeline():
    image = np.zeros((30, 30), np.uint8)
    image[5:15, 8:20] = 200
    result = Pipeline(FixedPrompter(Prompts(box_xyxy=[[4, 2, 24, 18]])), FakeSegmenter())(image)
    expected = np.zeros((30, 30), bool)
    expected[5:15, 8:20] = True
    np.testing.assert_array_equal(result.mask, expected)


def test_box_outside_image_is_error_in_pipeline():
    pipe = Pipeline(FixedPrompter(Prompts(box_xyxy=[[40, 40, 50, 50]])), FakeSegmenter())
    with pytest.raises(ValueError, match=r"box_xyxy: .*entirely outside"):
        pipe(np.zeros((30, 30)))


def test_repr():
    assert repr(FixedPrompter(Prompts(box_xyxy=[[0, 0, 1, 1]]))).startswith("FixedPrompter(Prompts(n=1")
