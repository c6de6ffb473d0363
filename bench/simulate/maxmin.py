"""Max-min fair rates of flows over capacitated resources (progressive filling, vectorised).

Each flow crosses a few resources (its source's upload, its destination's download, perhaps
a cross-zone link). Max-min fairness: no flow's rate can grow without shrinking a flow that
is no faster. Progressive filling raises every unfrozen flow's rate together; a resource
whose fair share (capacity left / unfrozen flows on it) is no larger than the share any of
its flows could get elsewhere is a bottleneck: its flows freeze at that share. Shares only
grow as flows freeze, so every bottleneck found in one round is final, and a round freezes
all of them at once (a handful of rounds, not one per distinct rate).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RELATIVE_TOLERANCE = 1e-9


def max_min_rates(capacity: FloatArray, resources: IntArray) -> FloatArray:
    """The max-min fair rate of every flow.

    Args:
        capacity: one capacity per resource (``inf`` for a resource that never limits).
        resources: shape (flows, k): the resources each flow crosses; repeat an index (or use
            an ``inf`` resource) for flows that cross fewer than ``k``.
    """
    flows = resources.shape[0]
    rates = np.zeros(flows)
    if flows == 0:
        return rates
    left = capacity.astype(np.float64, copy=True)
    unfrozen = np.arange(flows)
    n_res = capacity.shape[0]
    while unfrozen.size:
        res = resources[unfrozen]
        # a flow that crosses a resource twice counts once there
        uniq = np.sort(res, axis=1)
        first = np.ones_like(uniq, dtype=bool)
        first[:, 1:] = uniq[:, 1:] != uniq[:, :-1]
        counts = np.bincount(uniq[first], minlength=n_res)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(counts > 0, np.maximum(left, 0.0) / np.maximum(counts, 1), np.inf)
        flow_share = share[res].min(axis=1)
        lowest = np.full(n_res, np.inf)
        np.minimum.at(lowest, res.ravel(), np.repeat(flow_share, res.shape[1]))
        bottleneck = (counts > 0) & (lowest >= share * (1 - RELATIVE_TOLERANCE))
        freeze = bottleneck[res].any(axis=1)
        if not freeze.any():  # cannot happen with finite shares; guard against a float corner
            freeze = flow_share <= flow_share.min() * (1 + RELATIVE_TOLERANCE)
        frozen_ids = unfrozen[freeze]
        frozen_rates = flow_share[freeze]
        frozen_rates = np.where(np.isfinite(frozen_rates), frozen_rates, 0.0)
        rates[frozen_ids] = frozen_rates
        fres = uniq[freeze]
        ffirst = first[freeze]
        used = np.bincount(
            fres[ffirst], weights=np.repeat(frozen_rates, fres.shape[1])[ffirst.ravel()], minlength=n_res
        )
        left -= used
        unfrozen = unfrozen[~freeze]
    return rates
