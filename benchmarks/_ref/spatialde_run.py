"""Run SpatialDE 1.1.3 (``SpatialDE.run``) on an expression table; driver for benchmarks/svg.py.

Usage: <python with SpatialDE> spatialde_run.py IN.npz OUT.csv
IN.npz holds ``xy`` (n x 2), ``expr`` (n x G, already stabilised/residualised) and ``genes``.
Writes the SpatialDE results table plus a ``seconds`` column (wall time of ``SpatialDE.run``).
"""

import sys
import time

import numpy as np
import pandas as pd
import SpatialDE

z = np.load(sys.argv[1])
X = pd.DataFrame(z["xy"], columns=["x", "y"])
expr = pd.DataFrame(z["expr"], columns=[str(g) for g in z["genes"]])
t = time.perf_counter()
res = SpatialDE.run(X, expr)
res["seconds"] = time.perf_counter() - t
res.to_csv(sys.argv[2])
