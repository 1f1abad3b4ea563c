"""Seeded train/validation/test splits and k-fold cross-validation over sample stems."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import describe

__all__ = ["Fold", "Split", "kfold_splits", "train_val_test_split"]

_SHOW = 5


def _preview(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:_SHOW])
    more = f", ... ({len(names)} in total)" if len(names) > _SHOW else ""
    return f"[{shown}{more}]"


def _as_stem_tuple(value: Any, *, name: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected a list of stems, got {describe(value)}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name}: expected str stems, got {describe(item)}")
    return items


def _check_disjoint(**parts: tuple[str, ...]) -> None:
    seen: dict[str, str] = {}
    for part, stems in parts.items():
        duplicates = sorted(s for s, count in Counter(stems).items() if count > 1)
        if duplicates:
            raise ValueError(f"{part}: stems listed more than once: {_preview(duplicates)}")
        overlap = sorted(s for s in stems if s in seen)
        if overlap:
            raise ValueError(
                f"{part}: stems also in {seen[overlap[0]]}: {_preview(overlap)}; the parts of a split must be disjoint"
            )
        seen.update((s, part) for s in stems)


@dataclass(frozen=True)
class Split:
    """A train/validation/test split of sample stems (each part sorted, parts disjoint).

    Use :meth:`to_dict` / :meth:`from_dict` to save it as JSON with a run, and
    ``folder.subset(split.train)`` to get the samples.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = {name: _as_stem_tuple(getattr(self, name), name=name) for name in ("train", "val", "test")}
        _check_disjoint(**parts)
        for name, stems in parts.items():
            object.__setattr__(self, name, stems)

    def to_dict(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}``, ready for ``json.dump``."""
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        """Rebuild a split from :meth:`to_dict` output (e.g. loaded from JSON).

        Raises:
            TypeError: If ``data`` is not a mapping or a part is not a list of str.
            ValueError: If a key is missing or unknown, or the parts overlap.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"data: expected a dict with keys train/val/test, got {describe(data)}")
        expected = {"train", "val", "test"}
        missing = sorted(expected - set(data))
        unknown = sorted(set(map(str, data)) - expected)
        if missing or unknown:
            raise ValueError(f"data: expected keys ['test', 'train', 'val'], missing {missing}, unknown {unknown}")
        return cls(train=data["train"], val=data["val"], test=data["test"])


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: ``val`` is held out, ``train`` is everything else."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)):
            raise TypeError(f"index: expected an int, got {describe(self.index)}")
        train = _as_stem_tuple(self.train, name="train")
        val = _as_stem_tuple(self.val, name="val")
        _check_disjoint(train=train, val=val)
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "val", val)

    def to_dict(self) -> dict[str, Any]:
        """``{"index": i, "train": [...], "val": [...]}``, ready for ``json.dump``."""
        return {"index": self.index, "train": list(self.train), "val": list(self.val)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fold:
        """Rebuild a fold from :meth:`to_dict` output."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data: expected a dict with keys index/train/val, got {describe(data)}")
        missing = sorted({"index", "train", "val"} - set(data))
        if missing:
            raise ValueError(f"data: expected keys ['index', 'train', 'val'], missing {missing}")
        return cls(index=data["index"], train=data["train"], val=data["val"])


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _stems(items: Any) -> list[str]:
    """Sorted, validated stems from a list of stems or anything with ``.stems``."""
    stems_attr = getattr(items, "stems", None)
    if stems_attr is not None and not isinstance(items, (str, bytes)):
        items = stems_attr
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(f"items: expected a list of stems or a MaskFolder, got {describe(items)}")
    stems = list(items)
    for stem in stems:
        if not isinstance(stem, str):
            raise TypeError(f"items: expected str stems, got {describe(stem)}")
    if not stems:
        raise ValueError("items: expected at least one stem, got none")
    if len(set(stems)) != len(stems):
        duplicates = sorted(s for s, count in Counter(stems).items() if count > 1)
        raise ValueError(f"items: stems listed more than once: {_preview(duplicates)}")
    return sorted(stems)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {describe(seed)}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    return int(seed)


def _check_fraction(value: Any, *, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in [0, 1), got {describe(value)}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return value


def _label_sort_key(label: Hashable) -> tuple[str, str]:
    return (type(label).__name__, repr(label))


def _groups(stems: list[str], stratify: Mapping[str, Hashable] | None) -> list[list[str]]:
    """Stems grouped by label, groups in a deterministic label order, stems sorted."""
    if stratify is None:
        return [stems]
    if not isinstance(stratify, Mapping):
        raise TypeError(f"stratify: expected a mapping stem -> label (e.g. a dict), got {describe(stratify)}")
    missing = [s for s in stems if s not in stratify]
    if missing:
        raise ValueError(f"stratify: no label for {len(missing)} stems: {_preview(missing)}")
    by_label: dict[Hashable, list[str]] = {}
    for stem in stems:
        label = stratify[stem]
        try:
            by_label.setdefault(label, []).append(stem)
        except TypeError:
            raise TypeError(f"stratify: labels must be hashable, got {describe(label)} for stem '{stem}'") from None
    try:
        labels = sorted(by_label)  # type: ignore[type-var]  # unorderable labels: the except below
    except TypeError:  # labels of mixed, unorderable types
        labels = sorted(by_label, key=_label_sort_key)
    return [by_label[label] for label in labels]


# ---------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------


def train_val_test_split(
    items: Any,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: Mapping[str, Hashable] | None = None,
) -> Split:
    """Split stems at random into train, validation and test parts.

    The stems are sorted first and then shuffled with ``np.random.default_rng(seed)``,
    so the result depends only on the set of stems and the seed, not their order.
    ``n_test = round(test_fraction * n)`` and ``n_val = round(val_fraction * n)``
    (Python's ``round``: halves go to the even number); train gets the rest.

    Args:
        items: Stems (list/tuple of str) or a :class:`MaskFolder` (its stems are used).
        val_fraction: Fraction for validation, in ``[0, 1)``.
        test_fraction: Fraction for test, in ``[0, 1)``.
        seed: Non-negative int seed.
        stratify: Optional mapping stem -> label (e.g. ``True`` for an empty mask).
            Each label group is split on its own with the fractions above and the
            parts are merged, so every part keeps the label proportions (up to
            rounding per group; totals may then differ from the unstratified counts
            by a few items). Extra keys are ignored; every stem needs a label.

    Returns:
        A :class:`Split` with each part sorted.

    Raises:
        TypeError: On wrongly typed arguments.
        ValueError: If a fraction is outside ``[0, 1)``, their sum is not below 1,
            stems repeat, a stem has no label, or the train part would be empty.
    """
    stems = _stems(items)
    val_fraction = _check_fraction(val_fraction, name="val_fraction")
    test_fraction = _check_fraction(test_fraction, name="test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "val_fraction + test_fraction: expected a sum below 1 (train needs items), "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )
    rng = np.random.default_rng(_check_seed(seed))
    train: list[str] = []
    val: list[str] = []
    test: list[str] = []
    for group in _groups(stems, stratify):
        n = len(group)
        n_test = round(test_fraction * n)
        n_val = round(val_fraction * n)
        order = [group[i] for i in rng.permutation(n)]
        test += order[:n_test]
        val += order[n_test : n_test + n_val]
        train += order[n_test + n_val :]
    if not train:
        raise ValueError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: with {len(stems)} "
            f"items this leaves no training items (val {len(val)}, test {len(test)}); "
            "use smaller fractions or more items"
        )
    return Split(train=tuple(sorted(train)), val=tuple(sorted(val)), test=tuple(sorted(test)))


def kfold_splits(
    items: Any,
    *,
    k: int = 5,
    seed: int = 0,
    stratify: Mapping[str, Hashable] | None = None,
) -> list[Fold]:
    """Split stems into ``k`` cross-validation folds.

    Every stem is in the ``val`` part of exactly one fold, and fold sizes differ by at
    most one. The stems are sorted, shuffled with ``np.random.default_rng(seed)`` and
    dealt to the folds in turn, so the result does not depend on the input order.

    Args:
        items: Stems (list/tuple of str) or a :class:`MaskFolder`.
        k: Number of folds, an int with ``2 <= k <= n``.
        seed: Non-negative int seed.
        stratify: Optional mapping stem -> label. Each label group is shuffled and the
            groups are dealt one after the other, continuing the turn order, so each
            fold holds every label's count to within one and fold sizes still differ
            by at most one.

    Returns:
        ``k`` :class:`Fold` objects with ``index`` 0..k-1, each part sorted.

    Raises:
        TypeError: On wrongly typed arguments.
        ValueError: If ``k`` is out of range, stems repeat or a stem has no label.
    """
    stems = _stems(items)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an int >= 2, got {describe(k)}")
    if not 2 <= k <= len(stems):
        raise ValueError(f"k: expected an int with 2 <= k <= {len(stems)} (the number of items), got {k}")
    k = int(k)
    rng = np.random.default_rng(_check_seed(seed))
    dealt: list[str] = []
    for group in _groups(stems, stratify):
        dealt += [group[i] for i in rng.permutation(len(group))]
    buckets: list[list[str]] = [[] for _ in range(k)]
    for position, stem in enumerate(dealt):
        buckets[position % k].append(stem)
    folds = []
    for index, held_out in enumerate(buckets):
        held = set(held_out)
        folds.append(
            Fold(
                index=index,
                train=tuple(s for s in stems if s not in held),
                val=tuple(sorted(held_out)),
            )
        )
    return folds
