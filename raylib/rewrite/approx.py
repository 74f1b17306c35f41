"""Per-source approximation of p^(s) (seed 001, Section 4.5 "Implementation", Eq. 15-18).

For each source interpretation h_s a breadth-first search collects the paths that leave
it: a path is extended one transition at a time (at most ``depth`` transitions; None =
unlimited) only while it is non-cyclic and not yet absorbed, and a path whose probability
(the product of its Q entries) falls below ``epsilon`` is pruned. The states on surviving
paths form the visited set V_s, and the sub-chain restricted to them gives

    A^(s) = [[Q_VV, R_V], [0, I]],   N^(s) = (I - Q_VV)^-1,   p^(s) = N^(s)_s o r+_V     (Eq. 15-17)

Mass that leaves V_s (paths cut by depth or epsilon) is absorbed in neither state, so
p^(s) never overstates success. With unlimited depth and epsilon = 0 the visited set is
every state reachable from h_s, which is closed under transitions, so p^(s) equals the
exact row (tested against ``chain.ExactSolver``).

``h*`` = argmax_t p^(s)_t (Eq. 18); ``h* == h_s`` is the self-partition (no rewrite).
Each source keeps its ``top_k`` targets and always its own entry.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.linalg as la
import scipy.sparse as sp
import scipy.sparse.linalg as spla

DEFAULT_DEPTH = 5
DEFAULT_EPSILON = 1e-3
DEFAULT_TOP_K = 10
_DENSE_LIMIT = 400  # sub-chains up to this size are solved densely

SOURCE_RESULTS = pa.schema(
    [
        pa.field("source", pa.int64(), nullable=False),  # index into Chain.states
        pa.field("target", pa.int64(), nullable=False),
        pa.field("p", pa.float64(), nullable=False),  # Phi_inf(h_t) given h_s (Eq. 17)
        pa.field("is_best", pa.bool_(), nullable=False),  # t == h* (Eq. 18)
        pa.field("absorbed_mass", pa.float64(), nullable=False),  # P(absorbed inside V_s), per source
        pa.field("n_visited", pa.int64(), nullable=False),
    ]
)


def bfs_visited(Q: sp.csr_matrix, sources: np.ndarray, depth: int | None, epsilon: float) -> list[np.ndarray]:
    """The visited set V_s of each source: states on non-cyclic, not-yet-absorbed paths of
    at most ``depth`` transitions whose probability stays >= ``epsilon`` (> 0 when 0)."""
    sources = np.asarray(sources, dtype=np.int64)
    indptr, indices, data = Q.indptr, Q.indices, Q.data
    nodes = sources[:, None].copy()  # one row per path: its states in order
    owner = np.arange(len(sources))  # which source the path belongs to
    prob = np.ones(len(sources))
    seen_owner, seen_node = [owner], [sources]
    step = 0
    while len(nodes) and (depth is None or step < depth):
        last = nodes[:, -1]
        starts = indptr[last]
        deg = indptr[last + 1] - starts
        path = np.repeat(np.arange(len(nodes)), deg)
        offset = np.arange(len(path)) - np.repeat(np.cumsum(deg) - deg, deg)
        edge = np.repeat(starts, deg) + offset
        nxt = indices[edge]
        p = prob[path] * data[edge]
        keep = (p >= epsilon) & (p > 0) & ~(nodes[path] == nxt[:, None]).any(axis=1)
        path, nxt, p = path[keep], nxt[keep], p[keep]
        nodes = np.hstack([nodes[path], nxt[:, None]])
        owner, prob = owner[path], p
        seen_owner.append(owner)
        seen_node.append(nxt)
        step += 1
    all_owner = np.concatenate(seen_owner)
    all_node = np.concatenate(seen_node)
    pairs = np.unique(all_owner * (Q.shape[0] + 1) + all_node)
    pair_owner, pair_node = np.divmod(pairs, Q.shape[0] + 1)
    bounds = np.searchsorted(pair_owner, np.arange(len(sources) + 1))
    return [pair_node[bounds[k]:bounds[k + 1]] for k in range(len(sources))]


def subchain_success(Q: sp.csr_matrix, R: sp.csr_matrix, source: int, visited: np.ndarray) -> tuple[np.ndarray, float]:
    """p^(s) over ``visited`` (sorted, contains ``source``) from the sub-chain A^(s)
    (Eq. 15-17): returns (p over visited, probability of absorption inside V_s)."""
    q = Q[visited][:, visited]
    s = int(np.searchsorted(visited, source))
    m = len(visited)
    e = np.zeros(m)
    e[s] = 1.0
    if m <= _DENSE_LIMIT:
        n_row = la.solve(np.eye(m) - q.toarray().T, e)
    else:
        n_row = spla.spsolve((sp.identity(m, format="csc") - q.T).tocsc(), e)
    r = R[visited].toarray()
    return n_row * r[:, 0], float(n_row @ r.sum(axis=1))


def approximate_sources(
    Q: sp.csr_matrix,
    R: sp.csr_matrix,
    sources: np.ndarray,
    depth: int | None = DEFAULT_DEPTH,
    epsilon: float = DEFAULT_EPSILON,
    top_k: int | None = DEFAULT_TOP_K,
    chunk: int = 256,
) -> pa.Table:
    """BFS + sub-chain solve for each source (``SOURCE_RESULTS`` rows, sorted by source, target).

    Keeps the ``top_k`` targets by p (None = all visited) plus the source's own entry.
    """
    if epsilon < 0 or (depth is not None and depth < 1):
        raise ValueError("depth must be >= 1 (or None) and epsilon >= 0")
    sources = np.asarray(sources, dtype=np.int64)
    cols: dict[str, list] = {k: [] for k in SOURCE_RESULTS.names}
    for lo in range(0, len(sources), chunk):
        batch = sources[lo:lo + chunk]
        for s, visited in zip(batch, bfs_visited(Q, batch, depth, epsilon)):
            p, absorbed = subchain_success(Q, R, int(s), visited)
            keep = np.arange(len(visited))
            if top_k is not None and len(visited) > top_k:
                keep = np.argsort(-p, kind="stable")[:top_k]
                self_pos = int(np.searchsorted(visited, s))
                if self_pos not in keep:
                    keep = np.append(keep, self_pos)
                keep = np.sort(keep)
            # first maximum (deterministic tie-break); a source whose every path fails has none
            best = visited[int(np.argmax(p))] if p.max() > 0 else -1
            m = len(keep)
            cols["source"].append(np.full(m, s))
            cols["target"].append(visited[keep])
            cols["p"].append(p[keep])
            cols["is_best"].append(visited[keep] == best)
            cols["absorbed_mass"].append(np.full(m, absorbed))
            cols["n_visited"].append(np.full(m, len(visited)))
    if not cols["source"]:
        return SOURCE_RESULTS.empty_table()
    return pa.table({k: np.concatenate(v) for k, v in cols.items()}, schema=SOURCE_RESULTS)
