"""Subgraph mini-batches for DeepST's training on large samples.

Above :data:`._model.FULL_BATCH_MAX` spots an optimiser step no longer sees every spot: the tissue
is cut into spatially contiguous tiles (square cells of the coordinates, within each sample; their
size and the batch's are :func:`._model.subgraph_plan`'s: a tenth of the spots, 1,000 to 10,000, in
10 tiles), and each step trains on a random set of tiles holding about ``batch_spots`` spots, as Cluster-GCN trains on random unions of graph partitions (Chiang et al.,
KDD 2019; a tissue's spatial tiles are such a partition, with few edges cut). Unlike Cluster-GCN,
the batch's graph convolutions are exact for its spots: the inputs of their 2-hop neighbourhood
(the network has two graph convolutions) are added as a halo whose outputs are not used, and the
adjacency is the full graph's normalised one restricted, not renormalised on the subgraph, so a
spot's embedding is the one the full graph gives it. The losses are then means over the batch's
spots (reconstruction, KL, DEC), over the graph's edges between them and over as many random pairs
of them (graph decoder): unbiased estimates of the full-batch objective, apart from batch norm's
statistics and the edges cut by tile borders (a few per cent with tiles of thousands of spots).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def spatial_tiles(coords: np.ndarray, offsets: np.ndarray, tile_spots: int) -> np.ndarray:
    """Tile of every spot (``0..T-1``): square cells of the coordinates holding about ``tile_spots``
    spots on average, within each sample ``offsets[i]:offsets[i+1]`` (tiles never span samples)."""
    labels = np.empty(coords.shape[0], dtype=np.int64)
    next_id = 0
    for lo, hi in itertools.pairwise(offsets):
        c = np.asarray(coords[lo:hi, :2], dtype=np.float64)
        m = hi - lo
        span = c.max(0) - c.min(0) if m else np.zeros(2)
        area = float(span[0] * span[1])
        side = np.sqrt(area * tile_spots / m) if area > 0 else float(span.max()) * tile_spots / max(m, 1)
        if side <= 0:
            cell = np.zeros((m, 2), dtype=np.int64)
        else:
            cell = np.floor((c - c.min(0)) / side).astype(np.int64)
        ids = np.unique(cell[:, 0] * (int(cell[:, 1].max(initial=0)) + 1) + cell[:, 1], return_inverse=True)[1]
        labels[lo:hi] = ids.ravel() + next_id
        next_id += int(ids.max(initial=-1)) + 1
    return labels


@dataclass
class Batch:
    """One step's subgraph: ``nodes`` = the batch's spots (``core``, the first ``n_core``), then their
    neighbours (``n_ring1``), then the neighbours' neighbours; sparse torch matrices ``adj1`` (rows:
    core and first ring, columns: all nodes) and ``adj2`` (rows: core, columns: core and first ring)
    of the normalised adjacency; ``pos`` the graph's edges between core spots (local indices)."""

    nodes: object
    core: object
    n_core: int
    adj1: object
    adj2: object
    pos: object


class SubgraphBatches:
    """Draws the steps' batches: tiles in a seeded random order (a new permutation when all have been
    used), as many per step as make ``batch_spots`` spots; see the module docstring."""

    def __init__(self, adj_norm: sp.csr_matrix, adj_label: sp.csr_matrix, tiles: np.ndarray, batch_spots: int,
                 seed: int, device) -> None:
        self.adj = sp.csr_matrix(adj_norm)
        self.lab = sp.csr_matrix(adj_label)
        order = np.argsort(tiles, kind="stable")
        self.members = np.split(order, np.cumsum(np.bincount(tiles))[:-1])
        self.batch_spots = int(batch_spots)
        self.rng = np.random.default_rng(seed)
        self.queue: list[int] = []
        self.local = np.full(self.adj.shape[0], -1, dtype=np.int64)
        self.device = device

    def _core(self) -> np.ndarray:
        picked, size = [], 0
        while not picked or (size < self.batch_spots and len(picked) < len(self.members)):
            if not self.queue:
                self.queue = self.rng.permutation(len(self.members)).tolist()
            t = self.queue.pop()
            picked.append(self.members[t])
            size += len(self.members[t])
        return np.sort(np.concatenate(picked))

    def _neighbours(self, rows: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        return np.setdiff1d(self.adj[rows].indices, exclude)

    def _restrict(self, m: sp.csr_matrix, rows: np.ndarray, n_cols: int) -> sp.csr_matrix:
        """Rows ``rows`` of ``m`` with columns mapped to local indices, keeping those below ``n_cols``."""
        sub = m[rows]
        cols = self.local[sub.indices]
        keep = (cols >= 0) & (cols < n_cols)
        r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
        out = sp.csr_matrix((sub.data[keep], (r[keep], cols[keep])), shape=(len(rows), n_cols))
        out.sum_duplicates()  # sorted indices, no duplicates: the canonical form torch can take as coalesced
        return out

    def _sparse(self, m: sp.csr_matrix):
        """A canonical CSR matrix (sorted, no duplicates) as a torch COO tensor, already coalesced."""
        import torch

        coo = m.tocoo()
        idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        val = torch.from_numpy(coo.data.astype(np.float32))
        return torch.sparse_coo_tensor(idx, val, coo.shape, is_coalesced=True, check_invariants=False).to(self.device)

    def next(self) -> Batch:
        import torch

        core = self._core()
        ring1 = self._neighbours(core, core)
        inner = np.concatenate([core, ring1])
        ring2 = self._neighbours(ring1, inner)
        nodes = np.concatenate([inner, ring2])
        self.local[nodes] = np.arange(len(nodes))
        try:
            adj1 = self._restrict(self.adj, inner, len(nodes))
            adj2 = self._restrict(self.adj, core, len(inner))
            lab = self._restrict(self.lab, core, len(core)).tocoo()
        finally:
            self.local[nodes] = -1
        pos = torch.from_numpy(np.vstack([lab.row, lab.col]).astype(np.int64)).to(self.device)
        return Batch(
            nodes=torch.from_numpy(nodes).to(self.device),
            core=torch.from_numpy(core).to(self.device),
            n_core=len(core),
            adj1=self._sparse(adj1),
            adj2=self._sparse(adj2),
            pos=pos,
        )
