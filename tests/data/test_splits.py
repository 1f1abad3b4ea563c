"""Tests for medsamkit.data seeded splits and k-fold cross-validation."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medsamkit.data import Fold, MaskFolder, Split, kfold_splits, train_val_test_split

STEMS = [f"case_{i:03d}" for i in range(100)]


def _check_partition(split: Split, stems: list[str]) -> None:
    parts = [split.train, split.val, split.test]
    assert all(list(p) == sorted(p) for p in parts)
    union = [s for p in parts for s in p]
    assert len(union) == len(set(union)), "parts overlap"
    assert set(union) == set(stems), "parts do not cover all stems"


# ---------------------------------------------------------------------------------------
# train_val_test_split
# ---------------------------------------------------------------------------------------


def test_split_sizes_and_partition() -> None:
    split = train_val_test_split(STEMS)
    assert (len(split.train), len(split.val), len(split.test)) == (70, 10, 20)
    _check_partition(split, STEMS)
    assert all(isinstance(p, tuple) for p in (split.train, split.val, split.test))


def test_split_rounding() -> None:
    stems = STEMS[:13]
    split = train_val_test_split(stems, val_fraction=0.15, test_fraction=0.25)
    assert len(split.test) == round(0.25 * 13) == 3
    assert len(split.val) == round(0.15 * 13) == 2
    assert len(split.train) == 8
    split = train_val_test_split(stems, val_fraction=0.0, test_fraction=0.0)
    assert split.train == tuple(stems) and split.val == () and split.test == ()


def test_split_deterministic_and_seed_dependent() -> None:
    a = train_val_test_split(STEMS, seed=3)
    assert a == train_val_test_split(list(STEMS), seed=3)
    assert a == train_val_test_split(STEMS, seed=np.int64(3))
    assert a != train_val_test_split(STEMS, seed=4)


def test_split_independent_of_input_order() -> None:
    shuffled = list(np.random.default_rng(99).permutation(STEMS))
    assert train_val_test_split(shuffled, seed=7) == train_val_test_split(STEMS, seed=7)
    assert train_val_test_split(tuple(reversed(STEMS)), seed=7) == train_val_test_split(set(STEMS), seed=7)


def test_split_is_random_not_sorted_slices() -> None:
    split = train_val_test_split(STEMS, seed=0)
    assert split.test != tuple(STEMS[:20]) and split.test != tuple(STEMS[-20:])


def test_split_of_mask_folder(shared_dataset: Callable[[str], Path]) -> None:
    folder = MaskFolder(shared_dataset("cxr-shenzhen"))
    split = train_val_test_split(folder, seed=1)
    assert split == train_val_test_split(list(folder.stems), seed=1)
    _check_partition(split, list(folder.stems))
    assert (len(split.val), len(split.test)) == (round(0.1 * 59), round(0.2 * 59))
    train = folder.subset(split.train)
    assert len(train) == len(split.train)


def test_split_validation_errors() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_test_split(STEMS, val_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        train_val_test_split(STEMS, test_fraction=-0.1)
    with pytest.raises(ValueError, match="test_fraction"):
        train_val_test_split(STEMS, test_fraction=float("nan"))
    with pytest.raises(TypeError, match="val_fraction"):
        train_val_test_split(STEMS, val_fraction="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        train_val_test_split(STEMS, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="no training items"):
        train_val_test_split(["a", "b"], val_fraction=0.4, test_fraction=0.5)
    with pytest.raises(ValueError, match="at least one"):
        train_val_test_split([])
    with pytest.raises(ValueError, match="more than once.*'a'"):
        train_val_test_split(["a", "b", "a"])
    with pytest.raises(TypeError, match="items"):
        train_val_test_split("abc")
    with pytest.raises(TypeError, match="str stems"):
        train_val_test_split([1, 2, 3])
    with pytest.raises(TypeError, match="seed"):
        train_val_test_split(STEMS, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        train_val_test_split(STEMS, seed=-1)


def test_split_stratified_keeps_proportions() -> None:
    # BUSI-like: 133 of 780 empty masks (normals)
    stems = [f"img_{i:03d}" for i in range(780)]
    labels = {s: i < 133 for i, s in enumerate(stems)}
    split = train_val_test_split(stems, stratify=labels, seed=5)
    _check_partition(split, stems)
    for part, expected in ((split.test, 156), (split.val, 78), (split.train, 546)):
        assert abs(len(part) - expected) <= 2
        share = sum(labels[s] for s in part) / len(part)
        assert abs(share - 133 / 780) < 0.01
    # exact per-group counts
    assert sum(labels[s] for s in split.test) == round(0.2 * 133)
    assert sum(labels[s] for s in split.val) == round(0.1 * 133)
    # deterministic, order independent, ignores extra keys
    extra = dict(labels, unused=True)
    assert split == train_val_test_split(list(reversed(stems)), stratify=extra, seed=5)


def test_split_stratified_real_busi(shared_dataset: Callable[[str], Path]) -> None:
    folder = MaskFolder(shared_dataset("us-busi"))
    labels = {s: s.split("_")[0] for s in folder.stems}  # benign / malignant / normal
    split = train_val_test_split(folder, stratify=labels, seed=0)
    _check_partition(split, list(folder.stems))
    totals = Counter(labels.values())
    assert totals == {"benign": 437, "malignant": 210, "normal": 133}
    for part in (split.train, split.val, split.test):
        counts = Counter(labels[s] for s in part)
        for label, total in totals.items():
            assert abs(counts[label] / len(part) - total / 780) < 0.01


def test_split_stratify_errors() -> None:
    with pytest.raises(ValueError, match="no label for 1 stems.*'case_099'"):
        train_val_test_split(STEMS, stratify={s: 0 for s in STEMS[:-1]})
    with pytest.raises(TypeError, match="stratify"):
        train_val_test_split(STEMS, stratify=[0] * 100)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hashable"):
        train_val_test_split(STEMS, stratify={s: [0] for s in STEMS})


def test_split_stratify_mixed_label_types() -> None:
    labels = {s: (i % 2 if i % 3 else "x") for i, s in enumerate(STEMS)}
    split = train_val_test_split(STEMS, stratify=labels)
    _check_partition(split, STEMS)
    assert split == train_val_test_split(STEMS, stratify=labels)


def test_split_json_round_trip(tmp_path: Path) -> None:
    split = train_val_test_split(STEMS, seed=2)
    data = split.to_dict()
    assert set(data) == {"train", "val", "test"}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data))
    back = Split.from_dict(json.loads(path.read_text()))
    assert back == split
    assert isinstance(back.train, tuple)


def test_split_from_dict_validation() -> None:
    with pytest.raises(ValueError, match="missing \\['test'\\]"):
        Split.from_dict({"train": ["a"], "val": []})
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        Split.from_dict({"train": ["a"], "val": [], "test": [], "extra": []})
    with pytest.raises(ValueError, match="test: stems also in train.*'a'"):
        Split.from_dict({"train": ["a"], "val": [], "test": ["a"]})
    with pytest.raises(ValueError, match="train: stems listed more than once"):
        Split(train=("a", "a"), val=(), test=())
    with pytest.raises(TypeError, match="val: expected str stems"):
        Split.from_dict({"train": ["a"], "val": [3], "test": []})
    with pytest.raises(TypeError, match="data"):
        Split.from_dict(["a"])  # type: ignore[arg-type]


def test_split_is_frozen() -> None:
    split = train_val_test_split(STEMS)
    with pytest.raises(AttributeError):
        split.train = ()  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# kfold_splits
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(100, 5), (13, 5), (7, 7), (10, 3), (2, 2)])
def test_kfold_properties(n: int, k: int) -> None:
    stems = STEMS[:n]
    folds = kfold_splits(stems, k=k, seed=1)
    assert len(folds) == k
    assert [f.index for f in folds] == list(range(k))
    sizes = [len(f.val) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    all_val = [s for f in folds for s in f.val]
    assert sorted(all_val) == sorted(stems)  # each stem in exactly one val fold
    for fold in folds:
        assert isinstance(fold, Fold)
        assert not set(fold.train) & set(fold.val)
        assert set(fold.train) | set(fold.val) == set(stems)
        assert list(fold.val) == sorted(fold.val) and list(fold.train) == sorted(fold.train)


def test_kfold_deterministic_and_order_independent() -> None:
    shuffled = list(np.random.default_rng(3).permutation(STEMS))
    assert kfold_splits(shuffled, k=4, seed=9) == kfold_splits(STEMS, k=4, seed=9)
    assert kfold_splits(STEMS, k=4, seed=9) != kfold_splits(STEMS, k=4, seed=10)


def test_kfold_stratified() -> None:
    stems = [f"img_{i:03d}" for i in range(103)]
    labels = {s: ("normal" if i % 5 == 0 else "lesion") for i, s in enumerate(stems)}
    totals = Counter(labels.values())
    folds = kfold_splits(stems, k=5, seed=0, stratify=labels)
    sizes = [len(f.val) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(s for f in folds for s in f.val) == stems
    for label in totals:
        per_fold = [sum(labels[s] == label for s in f.val) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
        assert sum(per_fold) == totals[label]


def test_kfold_of_mask_folder(shared_dataset: Callable[[str], Path]) -> None:
    folder = MaskFolder(shared_dataset("cxr-montgomery"))
    folds = kfold_splits(folder, k=13)
    assert all(len(f.val) == 1 for f in folds)
    assert sorted(f.val[0] for f in folds) == list(folder.stems)


def test_kfold_validation_errors() -> None:
    with pytest.raises(ValueError, match="k: expected an int with 2 <= k <= 3"):
        kfold_splits(["a", "b", "c"], k=4)
    with pytest.raises(ValueError, match="k: "):
        kfold_splits(STEMS, k=1)
    with pytest.raises(TypeError, match="k: "):
        kfold_splits(STEMS, k=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="k: "):
        kfold_splits(STEMS, k=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than once"):
        kfold_splits(["a", "a", "b"], k=2)
    with pytest.raises(ValueError, match="no label"):
        kfold_splits(STEMS, k=2, stratify={})


def test_fold_json_round_trip() -> None:
    fold = kfold_splits(STEMS, k=3)[1]
    data = json.loads(json.dumps(fold.to_dict()))
    assert Fold.from_dict(data) == fold
    with pytest.raises(ValueError, match="missing \\['index'\\]"):
        Fold.from_dict({"train": [], "val": []})
