"""Model versions: align a refitted model's code labels to the current model's, and measure churn.

A refit learns codebooks whose code numbers are arbitrary: code 7 of the new level 1 may hold
what code 212 held before, and then every ID changes although the items did not move. Residual
codebooks are shared by every prefix, so each level can be relabelled on its own: a permutation
of a level's codewords changes the numbers its codes carry and nothing else (the decoded vectors,
and so the next levels' residuals, are the same). :func:`align` chooses, level by level, the
permutation under which the most items keep their old code number: a linear assignment on the
co-occurrence counts of old and new codes over the same items, ties going to the closer pair of
centroids. Numpy and scipy only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from semid_spark.core import ArrayLike
from semid_spark.exceptions import InvalidInputError


def level_permutation(
    old_codes: np.ndarray, new_codes: np.ndarray, n_old: int, n_new: int,
    old_centroids: np.ndarray | None = None, new_centroids: np.ndarray | None = None,
) -> np.ndarray:
    """The label each new code takes: (n_new,) int64, a permutation of range(n_new).

    Maximises the number of items whose new code's label equals their old code (a linear
    assignment on the (n_old, n_new) co-occurrence counts); among assignments keeping as many,
    the one with the least summed squared distance between paired centroids, when both are given
    and of one width. A smaller new codebook can only take the old labels below its size; new
    codes beyond the old codebook's size, or left unpaired, take the labels left over, in order.
    """
    usable = min(n_old, n_new)  # labels a new code can carry: range(n_new)
    keep = old_codes < usable
    counts = np.zeros((usable, n_new), dtype=np.float64)
    np.add.at(counts, (old_codes[keep], new_codes[keep]), 1.0)
    cost = -counts
    if old_centroids is not None and new_centroids is not None and old_centroids.shape[1] == new_centroids.shape[1]:
        dist = ((old_centroids[:usable].astype(np.float64)[:, None, :] - new_centroids.astype(np.float64)[None]) ** 2
                ).sum(-1)
        if dist.max() > 0:  # scaled so that all of them together weigh less than one shared item
            cost = cost + dist / (dist.max() * (usable + 1))
    rows, cols = linear_sum_assignment(cost)
    labels = np.full(n_new, -1, dtype=np.int64)
    labels[cols] = rows
    free = np.setdiff1d(np.arange(n_new), labels[labels >= 0])
    labels[labels < 0] = free[: int((labels < 0).sum())]
    return labels


def permute_model(model, labels: list[np.ndarray]):
    """A copy of *model* (RQKMeans or RQVAE) whose level-l codeword i is stored at labels[l][i]."""
    out = copy.deepcopy(model)
    if hasattr(out, "_weights"):  # RQVAE: the quantizer's codebooks are weights like any other
        for level, label in enumerate(labels):
            name = f"quantizer.codebooks.{level}"
            book = out._weights[name]
            permuted = np.empty_like(book)
            permuted[label] = book
            out._weights[name] = permuted
        out._module, out._frozen = None, None
        return out
    books, offsets = [], []
    for level, label in enumerate(labels):
        book = np.empty_like(model.codebooks_[level])
        book[label] = model.codebooks_[level]
        books.append(book)
        if getattr(model, "offsets_", None) is not None:
            level_offsets = np.empty_like(model.offsets_[level])
            level_offsets[label] = model.offsets_[level]
            offsets.append(level_offsets)
    out._set_codebooks(books, offsets or None)
    return out


@dataclass(frozen=True)
class Alignment:
    model: object  # the new model, relabelled
    labels: list[np.ndarray]  # per level: the label each of the new model's codes took
    old_codes: np.ndarray  # (n, L) the current model's codes of the items
    new_codes: np.ndarray  # (n, L) the unaligned new model's codes
    aligned_codes: np.ndarray  # (n, L) the aligned model's codes (labels applied)


def align(old_model, new_model, X: ArrayLike, *, old_codes: np.ndarray | None = None) -> Alignment:
    """Relabel *new_model*'s codes, level by level, to agree with *old_model*'s on the items *X*.

    *old_codes*: the items' current codes when known (e.g. read from the table; default: encode
    X with old_model). The same inputs give the same alignment.
    """
    x = np.asarray(X, dtype=np.float32)
    old = old_model.encode(x) if old_codes is None else np.asarray(old_codes)
    new = new_model.encode(x)
    if len(old) != len(new) or old.shape[1] != new.shape[1] or not len(new):
        raise InvalidInputError(f"old codes {old.shape} and new codes {new.shape}: expected the same items and "
                                "levels, at least one item")
    old_books, new_books = old_model.codebooks_, new_model.codebooks_
    labels = [level_permutation(old[:, level], new[:, level], len(old_books[level]), len(new_books[level]),
                                old_books[level], new_books[level])
              for level in range(new.shape[1])]
    aligned = np.stack([labels[level][new[:, level]] for level in range(new.shape[1])], axis=1).astype(np.int32)
    return Alignment(permute_model(new_model, labels), labels, old, new, aligned)


def churn(old_codes: np.ndarray, new_codes: np.ndarray) -> list[float]:
    """Share of items whose level 1..d prefix changes, for d = 1..L (the last: the full code)."""
    old_codes, new_codes = np.asarray(old_codes), np.asarray(new_codes)
    same = np.ones(len(old_codes), dtype=bool)
    out = []
    for level in range(old_codes.shape[1]):
        same &= old_codes[:, level] == new_codes[:, level]
        out.append(float(1.0 - same.mean()))
    return out
