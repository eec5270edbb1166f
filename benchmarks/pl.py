"""Benchmark of ``em.pl.plot_spatial`` against ``scanpy.pl.spatial`` on real Visium data.

Data: ``$EXPERIMAT_DATA_DIR/visium_mouse_muscle_mckellar2021/{Vis5A_2dpi,Vis7B_5dpi}`` (two samples,
~1,000 spots each, lowres image only, so ``hires`` falls back to ``lowres``).

Measured in the same run (same machine load):
- time to build the figure and save a PNG (both samples, one gene over the H&E image);
- agreement: the rendered colour at every spot centre (ours at the full-resolution coordinate,
  scanpy's at coordinate x scale factor), with the same colormap and limits; and the image pixel
  under each spot centre in both renderings with the spots hidden (checks image placement).

Run: ``EXPERIMAT_DATA_DIR=... python benchmarks/pl.py``.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.image import imread

import experimat as em
from experimat import pl

_TMP = tempfile.mkdtemp(prefix='experimat-pl-bench-')

SAMPLES = ("Vis5A_2dpi", "Vis7B_5dpi")
DPI = 100


def _load():
    import scanpy as sc

    root = em.settings.data_dir / "visium_mouse_muscle_mckellar2021"
    out = {}
    for s in SAMPLES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = sc.read_visium(root / s, library_id=s, load_images=False)  # no hires image stored
        a.var_names_make_unique()
        pos = pd.read_csv(root / s / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
        pos = pos.loc[a.obs_names]
        a.obsm["spatial"] = pos[[5, 4]].to_numpy(dtype=float)  # (x, y) = (pxl_col, pxl_row) full resolution
        scalefactors = json.loads((root / s / "spatial" / "scalefactors_json.json").read_text())
        lowres = imread(root / s / "spatial" / "tissue_lowres_image.png")
        a.uns["spatial"] = {s: {"images": {"lowres": lowres}, "scalefactors": scalefactors}}
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        out[s] = a
    return out


def _buffer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if hasattr(fig.canvas, "buffer_rgba") else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float) / 255


def _sample(buf, ax, pts):
    pix = ax.transData.transform(pts)
    h = buf.shape[0]
    r = np.clip(np.round(h - pix[:, 1]).astype(int), 0, h - 1)
    c = np.clip(np.round(pix[:, 0]).astype(int), 0, buf.shape[1] - 1)
    return buf[r, c]


def main() -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    adatas = _load()
    first = adatas[SAMPLES[0]]
    gene = first.var_names[np.argsort(-np.asarray(first.X.sum(0)).ravel())[5]]
    all_vals = np.concatenate([np.asarray(a[:, gene].X.toarray()).ravel() for a in adatas.values()])
    vmax = float(all_vals.max())
    print(f"data: {', '.join(f'{s} {a.n_obs} spots' for s, a in adatas.items())}; gene {gene}")

    # --- timing (3 repeats, best), both samples, figure + PNG
    def ours(visible=True):
        fig = pl.plot_spatial(
            adatas,
            channels=["hires/r", "hires/g", "hires/b"],  # not stored here: falls back to lowres
            plot_embeddings={"color": gene, "vmin": 0.0, "vmax": vmax, "visible": visible, "legend": False},
            figsize=(8, 4),
        )
        return fig

    def theirs(visible=True):
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, (s, a) in zip(axes, adatas.items(), strict=True):
            sc.pl.spatial(
                a,
                color=gene if visible else None,
                img_key="lowres",
                library_id=s,
                vmin=0.0,
                vmax=vmax,
                ax=ax,
                show=False,
                colorbar_loc=None,
                alpha=1.0 if visible else 0.0,
            )
        return fig, axes

    em.settings.verbosity = "warning"
    t_ours, t_theirs = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ours().savefig(f"{_TMP}/_bench_ours.png", dpi=DPI)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fig, _ = theirs()
        fig.savefig(f"{_TMP}/_bench_scanpy.png", dpi=DPI)
        plt.close(fig)
        t_theirs.append(time.perf_counter() - t0)
    to, tt = min(t_ours), min(t_theirs)
    print(f"time (figure + PNG, 2 samples): experimat {to:.3f} s, scanpy {tt:.3f} s, ratio {to / tt:.2f}")

    # --- agreement of spot colours at spot centres
    fo = ours()
    bo = _buffer(fo)
    fs, axes_s = theirs()
    bs = _buffer(fs)
    diffs, img_diffs = [], []
    axes_o = [ax for ax in fo.axes if ax.get_title()]
    for ax_o, ax_s, (s, a) in zip(axes_o, axes_s, adatas.items(), strict=True):
        sf = a.uns["spatial"][s]["scalefactors"]["tissue_lowres_scalef"]
        xy = a.obsm["spatial"].astype(float)
        co = _sample(bo, ax_o, xy)
        cs = _sample(bs, ax_s, xy * sf)
        diffs.append(np.abs(co - cs).max(1))
    plt.close(fs)
    d = np.concatenate(diffs)
    print(
        f"spot colour at centres: median |diff| {np.median(d):.4f}, 95th pct {np.percentile(d, 95):.4f}, "
        f"spots within 0.05: {100 * (d < 0.05).mean():.1f} %"
    )

    # --- image placement: image pixel under each spot centre, spots hidden
    fo = ours(visible=False)
    bo = _buffer(fo)
    fs, axes_s = theirs(visible=False)
    bs = _buffer(fs)
    axes_o = [ax for ax in fo.axes if ax.get_title()]
    for ax_o, ax_s, (s, a) in zip(axes_o, axes_s, adatas.items(), strict=True):
        sf = a.uns["spatial"][s]["scalefactors"]["tissue_lowres_scalef"]
        xy = a.obsm["spatial"].astype(float)
        img = a.uns["spatial"][s]["images"]["lowres"][..., :3]
        r = np.clip(np.round(xy[:, 1] * sf).astype(int), 0, img.shape[0] - 1)
        c = np.clip(np.round(xy[:, 0] * sf).astype(int), 0, img.shape[1] - 1)
        truth = img[r, c]
        po, ps = _sample(bo, ax_o, xy), _sample(bs, ax_s, xy * sf)
        img_diffs.append((np.abs(po - truth).mean(1), np.abs(ps - truth).mean(1), np.abs(po - ps).mean(1)))
    ours_d = np.concatenate([x[0] for x in img_diffs])
    sc_d = np.concatenate([x[1] for x in img_diffs])
    print(
        f"image under spot centres vs the stored pixel: experimat mean |diff| {ours_d.mean():.4f}, "
        f"scanpy {sc_d.mean():.4f}; experimat vs scanpy {np.concatenate([x[2] for x in img_diffs]).mean():.4f}"
    )
    fo.savefig(f"{_TMP}/_bench_ours_img.png", dpi=DPI)
    fs.savefig(f"{_TMP}/_bench_scanpy_img.png", dpi=DPI)


if __name__ == "__main__":
    main()
