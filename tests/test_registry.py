"""Tests for medsamkit._registry: names, builders, and component configs."""

from __future__ import annotations

import numpy as np
import pytest

import medsamkit.prompters
from medsamkit import FillHoles, FittablePrompter, KeepLargestComponents, Prompts, RemoveSmallComponents, _registry
from medsamkit._registry import (
    POSTPROCESSORS,
    PREPROCESSORS,
    PROMPTERS,
    SEGMENTERS,
    build_postprocessor,
    build_prompter,
    component_config,
    components,
    fittable_prompters,
    load_segmenter,
    register_component,
)
from medsamkit.prompters import FixedPrompter, MeanMaskPointPrompter, OracleBoxPrompter, PerturbedBoxPrompter
from medsamkit.testing import FakeSegmenter


def test_registered_names():
    assert sorted(PROMPTERS) == [
        "cam-box",
        "decoder-localiser",
        "embedding-head",
        "fixed",
        "mean-mask-points",
        "oracle-box",
        "perturbed-box",
        "ranked",
        "refined",
        "yolo-box",
    ]
    assert sorted(SEGMENTERS) == [
        "fake",
        "hq-sam-vit-b",
        "hq-sam-vit-h",
        "hq-sam-vit-l",
        "litemedsam",
        "sam-vit-b",
        "sam-vit-h",
        "sam-vit-l",
    ]
    assert set(POSTPROCESSORS) == {"keep-largest", "remove-small", "fill-holes"}
    assert set(PREPROCESSORS) == {"window", "percentile-clip", "clahe"}


def test_unknown_prompter_lists_valid_names():
    with pytest.raises(
        ValueError,
        match=r"^prompter: expected one of \['cam-box', 'decoder-localiser', 'embedding-head', 'fixed', 'mean-mask-points', 'oracle-box', 'perturbed-box', 'ranked', 'refined', 'yolo-box'\], got 'oracel-box'",
    ):
        build_prompter("oracel-box")


def test_unknown_segmenter_lists_valid_names():
    with pytest.raises(
        ValueError,
        match=r"^segmenter: expected one of \['fake', 'hq-sam-vit-b', .*'litemedsam', 'sam-vit-b', 'sam-vit-h', 'sam-vit-l'\], got 'sam2'",
    ):
        load_segmenter("sam2")


def test_unknown_postprocessor_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"^postprocess: expected one of \['fill-holes', 'keep-largest', 'remove-small'\], got 'erode'"
    ):
        build_postprocessor("erode")


def test_build_prompters_with_params():
    oracle = build_prompter("oracle-box", mode="whole", min_area=4)
    assert isinstance(oracle, OracleBoxPrompter)
    assert oracle.params() == {"mode": "whole", "min_area": 4}
    perturbed = build_prompter("perturbed-box", margin=5, seed=2)
    assert isinstance(perturbed, PerturbedBoxPrompter)
    assert perturbed.margin == 5.0 and perturbed.seed == 2


def test_build_segmenter_and_postprocessors():
    fake = load_segmenter("fake", mode="box", point_radius=3)
    assert isinstance(fake, FakeSegmenter)
    assert fake.params() == {"mode": "box", "point_radius": 3}
    assert isinstance(build_postprocessor("keep-largest", n=2), KeepLargestComponents)
    assert build_postprocessor("keep-largest", n=2).n == 2
    assert build_postprocessor("remove-small", min_area=9).min_area == 9
    assert isinstance(build_postprocessor("fill-holes"), FillHoles)


def test_postprocessor_names_match_classes():
    for name in POSTPROCESSORS:
        assert build_postprocessor(name).name == name


def test_unexpected_parameter_is_value_error_naming_component():
    with pytest.raises(ValueError, match=r"^prompter 'oracle-box': bad parameters \{'margin': 5\}"):
        build_prompter("oracle-box", margin=5)
    with pytest.raises(ValueError, match=r"^segmenter 'fake': bad parameters"):
        load_segmenter("fake", checkpoint="x.pth")
    with pytest.raises(ValueError, match=r"^postprocess 'fill-holes': bad parameters"):
        build_postprocessor("fill-holes", n=1)


def test_invalid_parameter_value_keeps_the_constructor_message():
    with pytest.raises(ValueError, match=r"^mode: expected 'components' or 'whole'"):
        build_prompter("oracle-box", mode="box")


def test_litemedsam_with_in_memory_module_cannot_be_rebuilt():
    with pytest.raises(ValueError, match=r"^segmenter: .*in-memory module"):
        load_segmenter("litemedsam", module="MedSAM_Lite(...)")


class TestMeanMaskPoints:
    @pytest.fixture
    def state(self, tmp_path):
        mask = np.zeros((32, 32), bool)
        mask[8:24, 8:24] = True
        return MeanMaskPointPrompter(grid_size=32, points_per_component=2).fit([mask]).save(tmp_path / "p.npz")

    def test_needs_state(self):
        with pytest.raises(ValueError, match=r"^state: the 'mean-mask-points' prompter must be fitted"):
            build_prompter("mean-mask-points")

    def test_loads_state(self, state):
        prompter = build_prompter("mean-mask-points", state=str(state), points_per_component=2, grid_size=32)
        assert isinstance(prompter, MeanMaskPointPrompter)
        assert prompter(np.zeros((32, 32))).points_xy.shape == (1, 2, 2)

    def test_param_contradicting_state(self, state):
        with pytest.raises(ValueError, match=r"^points_per_component: the saved prompter .* has 2, the config 3"):
            build_prompter("mean-mask-points", state=state, points_per_component=3)

    def test_unknown_param(self, state):
        with pytest.raises(ValueError, match=r"^prompter 'mean-mask-points': bad parameters .*'colour'"):
            build_prompter("mean-mask-points", state=state, colour="red")


class TestComponentConfig:
    @pytest.mark.parametrize(
        "component, name",
        [
            (OracleBoxPrompter(), "oracle-box"),
            (PerturbedBoxPrompter(margin=2), "perturbed-box"),
            (FixedPrompter(Prompts.empty()), "fixed"),
            (FakeSegmenter(), "fake"),
            (KeepLargestComponents(2), "keep-largest"),
            (RemoveSmallComponents(3), "remove-small"),
            (FillHoles(), "fill-holes"),
        ],
    )
    def test_registered_components(self, component, name):
        config = component_config(component)
        assert config == {"name": name, "params": component.params()}

    def test_config_rebuilds_equivalent_component(self):
        original = PerturbedBoxPrompter(margin=3, jitter=2, jitter_fraction=0.05, seed=9, mode="whole", min_area=1)
        config = component_config(original)
        rebuilt = build_prompter(config["name"], **config["params"])
        assert rebuilt.params() == original.params()
        mask = np.zeros((40, 40), bool)
        mask[10:20, 5:30] = True
        np.testing.assert_array_equal(rebuilt(mask, target=mask).box_xyxy, original(mask, target=mask).box_xyxy)

    def test_foreign_components_get_python_names(self):
        class MyStep:
            name = "keep-largest"  # pretends to be registered, but lives outside medsamkit

            def __call__(self, mask):  # pragma: no cover - not called
                return mask

        config = component_config(MyStep())
        assert config["name"] == f"python:{__name__}.{MyStep.__qualname__}"
        assert config["params"] == {}

        def my_function(mask):  # pragma: no cover - not called
            return mask

        assert component_config(my_function)["name"] == "python:builtins.function"

    def test_same_class_name_outside_medsamkit_is_not_registered(self):
        OracleBoxPrompter = type("OracleBoxPrompter", (), {"params": lambda self: {"mode": "whole"}})  # noqa: N806
        config = component_config(OracleBoxPrompter())
        assert config["name"].startswith("python:")
        assert config["params"] == {"mode": "whole"}


class TestRegistration:
    @pytest.fixture
    def own_registry(self, monkeypatch):
        """A copy of the registry for one test: names registered here do not outlive it."""
        monkeypatch.setattr(_registry, "_TABLES", {kind: dict(table) for kind, table in _registry._TABLES.items()})
        monkeypatch.setattr(_registry, "_NAMES_OF", dict(_registry._NAMES_OF))

    def test_fittable_prompters_are_the_prompters_with_the_fittable_contract(self):
        """The registry's ``fitted`` flag and the FittablePrompter protocol agree: no second list of names.

        ``isinstance`` on the class object checks that the class carries every member of
        the protocol (``fit``, ``save``, ``load``, ``params``, ``state_suffix``, ...).
        """
        prompters = components("prompter")
        with_contract = {name for name, component in prompters.items() if isinstance(component.cls, FittablePrompter)}
        assert set(fittable_prompters()) == with_contract
        assert {"embedding-head", "oracle-box"} <= set(prompters) and "oracle-box" not in with_contract
        assert all(component.fitted for component in fittable_prompters().values())
        public = [getattr(medsamkit.prompters, name) for name in medsamkit.prompters.__all__]
        learned = {cls for cls in public if isinstance(cls, type) and isinstance(cls, FittablePrompter)}
        assert learned == {component.cls for component in fittable_prompters().values()}

    def test_components_know_their_classes(self):
        assert components("prompter")["oracle-box"].cls is OracleBoxPrompter
        assert components("segmenter")["fake"].cls is FakeSegmenter
        assert components("postprocess")["fill-holes"].cls is FillHoles
        sam = {name: c.cls.__name__ for name, c in components("segmenter").items() if "sam-vit" in name}
        assert sam == {f"{p}-vit-{t}": c for p, c in (("sam", "SAM"), ("hq-sam", "HQSAM")) for t in "blh"}

    def test_unknown_kind(self):
        with pytest.raises(
            ValueError, match=r"^kind: expected one of \['prompter', 'segmenter', 'postprocess', 'preprocess'\], got 'metric'"
        ):
            components("metric")
        with pytest.raises(ValueError, match=r"^kind: expected one of"):
            register_component("metric", "dice")

    def test_a_taken_name_is_refused(self, own_registry):
        with pytest.raises(ValueError, match=r"^name: the prompter name 'oracle-box' is taken by OracleBoxPrompter"):

            @register_component("prompter", "oracle-box")
            class Other:
                pass

    def test_only_classes_register(self, own_registry):
        with pytest.raises(TypeError, match=r"^register: expected a class, got function"):
            register_component("postprocess", "identity")(lambda mask: mask)

    def test_a_fitted_component_is_rebuilt_from_its_state(self, own_registry, tmp_path):
        @register_component("prompter", "test-saved", fitted=True)
        class Saved:
            requires_target = False
            uses_encoding = False
            state_suffix = ".txt"

            def __init__(self, value=0):
                self.value = value

            @classmethod
            def load(cls, path, **overrides):
                return cls(int(open(path).read()), **overrides)

        (tmp_path / "s.txt").write_text("7")
        assert build_prompter("test-saved", state=tmp_path / "s.txt").value == 7
        with pytest.raises(
            ValueError, match=r"^state: the 'test-saved' prompter must be fitted; give the .txt saved by Saved.save\(\)"
        ):
            build_prompter("test-saved")
        assert "test-saved" in fittable_prompters()

    def test_registry_names_do_not_outlive_the_fixture(self):
        assert "test-saved" not in PROMPTERS


def test_looking_names_up_stays_light():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import medsamkit

    code = (
        "import json, sys\n"
        "from medsamkit._registry import components\n"
        "names = [list(components(k)) for k in ('prompter', 'segmenter', 'postprocess')]\n"
        "print(json.dumps([m for m in ('torch', 'cv2', 'scipy', 'pydantic') if m in sys.modules]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(medsamkit.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_command_line_choices_are_the_registry():
    from medsamkit.cli._main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    prompter = next(a for a in commands["evaluate"]._actions if a.dest == "prompter")
    segmenter = next(a for a in commands["evaluate"]._actions if a.dest == "segmenter")
    fittable = next(a for a in commands["fit-prompter"]._actions if a.dest == "prompter")
    assert list(prompter.choices) == list(PROMPTERS)
    assert list(segmenter.choices) == list(SEGMENTERS)
    assert list(fittable.choices) == list(fittable_prompters())
