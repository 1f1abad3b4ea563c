"""out_of_fold_prompts: each training image's prompts come from a prompter fitted without it."""

from __future__ import annotations

import numpy as np
import pytest

import medsamkit as msk
from medsamkit import Prompts
from medsamkit.training import out_of_fold_prompts


class _FoldPrompter:
    """Remembers what it was fitted on; its box says which fit it is and what it was given."""

    requires_target = False

    def __init__(self, fold: int, fitted_on: set[str], uses_encoding: bool) -> None:
        self.fold, self.fitted_on, self.uses_encoding = fold, fitted_on, uses_encoding
        self.bound = None
        self.seen: list[tuple[np.ndarray, object]] = []

    def bind_segmenter(self, segmenter):
        self.bound = segmenter

    def __call__(self, image, *, target=None, encoding=None):
        self.seen.append((image, encoding))
        if self.fold == 2:  # one fit that finds nothing
            return Prompts.empty()
        return Prompts(box_xyxy=[[self.fold, 0, self.fold + 5, 5]])


class _S:
    def __init__(self, stem, seed):
        rng = np.random.default_rng(seed)
        self.stem = stem
        self.image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        self.mask = np.zeros((20, 24), dtype=bool)

    def load(self):
        return self.image, self.mask


@pytest.mark.parametrize("uses_encoding", [True, False])
def test_each_sample_gets_the_prompts_of_the_fit_that_left_it_out(uses_encoding):
    samples = [_S(f"s{i}", i) for i in range(11)]
    fits: list[_FoldPrompter] = []

    def fit(train):
        fits.append(_FoldPrompter(len(fits) + 1, {s.stem for s in train}, uses_encoding))
        return fits[-1]

    seg = msk.testing.FakeSegmenter()
    prompts = out_of_fold_prompts(fit, samples, seg, folds=3, seed=1)

    assert list(prompts) == [s.stem for s in samples]  # every sample, in the samples' order
    assert len(fits) == 3
    all_stems = {s.stem for s in samples}
    held_out = [all_stems - f.fitted_on for f in fits]
    assert set().union(*held_out) == all_stems and sum(map(len, held_out)) == len(samples)  # the folds partition
    assert sorted(map(len, held_out)) == [3, 4, 4]
    for fold in fits:
        assert fold.bound is seg
        assert len(fold.seen) == len(samples) - len(fold.fitted_on)
        for _, encoding in fold.seen:
            assert (encoding is not None) == uses_encoding
    for stem, p in prompts.items():
        fold = next(f for f in fits if stem not in f.fitted_on)
        if fold.fold == 2:
            assert p.n == 0
        else:
            np.testing.assert_array_equal(p.box_xyxy, [[fold.fold, 0, fold.fold + 5, 5]])
    # The same seed gives the same folds.
    fits.clear()
    again = out_of_fold_prompts(fit, samples, seg, folds=3, seed=1)
    assert [all_stems - f.fitted_on for f in fits] == held_out
    assert {k: v.n for k, v in again.items()} == {k: v.n for k, v in prompts.items()}


def test_bad_input():
    samples = [_S(f"s{i}", i) for i in range(4)]
    seg = msk.testing.FakeSegmenter()

    def fit(train):
        return _FoldPrompter(1, set(), False)

    with pytest.raises(ValueError, match=r"folds: expected an int in \[2, 4\]"):
        out_of_fold_prompts(fit, samples, seg, folds=5)
    with pytest.raises(ValueError, match="folds"):
        out_of_fold_prompts(fit, samples, seg, folds=1)
    with pytest.raises(ValueError, match="unique str stems"):
        out_of_fold_prompts(fit, [samples[0], samples[0]], seg, folds=2)
    with pytest.raises(TypeError, match="fit: expected it to return a prompt provider, got int"):
        out_of_fold_prompts(lambda train: 3, samples, seg, folds=2)
    with pytest.raises(TypeError, match="fit: expected a callable"):
        out_of_fold_prompts("head", samples, seg, folds=2)
