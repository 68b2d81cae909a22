"""``RQKMeansTorch``: semantic-id 0.2.5's torch back-end of RQ-KMeans, as a face over :class:`RQKMeans`.

semantic-id keeps a second class for fitting and encoding on a torch device; here one
implementation fits and encodes on cpu, cuda or mps (the same codes on each), so this class
only takes semantic-id's constructor (every argument required but ``n_init``, ``device``
among them) and torch tensors as input. Everything else is :class:`RQKMeans`'s: codebooks_
are numpy arrays, and ``save``/``load``/``decode``/``semantic_id`` work as there.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans


class RQKMeansTorch(RQKMeans):
    """RQ-KMeans fitted and encoded on ``device`` (``"cpu"``, ``"cuda[:N]"``, ``"mps"``).

    >>> RQKMeansTorch(3, 256, "l2", "kmeans", 100, 1e-4, 0, False, "cuda").fit(X).encode(X)  # doctest: +SKIP
    """

    def __init__(
        self,
        n_levels: int,
        n_clusters: int | Sequence[int],
        metric: Literal["l2", "cosine"],
        implementation: Literal["kmeans", "constrained"],
        max_iter: int,
        tol: float,
        random_state: int | None,
        verbose: bool,
        device: str,
        n_init: int | None = None,
    ) -> None:
        super().__init__(n_levels=n_levels, n_clusters=n_clusters, metric=metric, implementation=implementation,
                         max_iter=max_iter, tol=tol, random_state=random_state, verbose=verbose, n_init=n_init,
                         device=device)

    def fit(self, X, *, device: str | None = None, init: RQKMeans | None = None) -> "RQKMeansTorch":
        """Fit on X, an (N, D) array or torch tensor (on any device), on ``device``; returns self.
        *init*: a fitted model of the same shape whose codebooks Lloyd starts from (see :meth:`RQKMeans.fit`)."""
        return super().fit(X, device=device, init=init)

    def encode(self, X, batch_size: int | None = None, *, device: str | None = None) -> np.ndarray:
        """Codes (N, L) int32 of X, an array or tensor; semantic-id's positional ``batch_size``."""
        return super().encode(X, device=device, batch_size=batch_size)
