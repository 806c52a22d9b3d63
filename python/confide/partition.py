"""Confide's seeded partitioners: split one data set among simulated owners."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence


def partition(
    labels: Iterable[int],
    owners: int,
    how: str = "iid",
    seed: int = 0,
    *,
    groups: Optional[Sequence[str]] = None,
    alpha: Optional[float] = None,
    beta: Optional[float] = None,
    shards_per_owner: Optional[int] = None,
) -> list[list[int]]:
    """Split records among ``owners`` and return each owner's record indices, ascending.

    ``how`` is ``"natural"`` (one owner per value of ``groups``), ``"iid"``, ``"dirichlet"``
    (per-class shares ~ Dirichlet(``alpha``)), ``"shards"`` (``shards_per_owner`` label-sorted
    shards each) or ``"quantity"`` (sizes ~ Dirichlet(``beta``)). The same labels, groups and
    seed give the same split as ``[simulate.partition]``.
    """
    from . import _native

    return _native.partition(
        [int(x) for x in labels],
        owners,
        how,
        seed,
        None if groups is None else [str(g) for g in groups],
        alpha,
        beta,
        shards_per_owner,
    )
