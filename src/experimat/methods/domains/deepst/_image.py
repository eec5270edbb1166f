"""Morphology features of spot tiles without downloads.

Tiles are cut from the stored tissue image at the spot diameter and streamed in batches: they are
never all held in memory and never written to disk unless a ``save_path`` is given (then as bounded
``.npz`` shards, removed again when the run fails).

Two extractors:

* the built-in one (default): colour statistics (RGB mean/sd/quantiles, optical density), gradient
  energy, a bank of Gabor filters (4 orientations x 2 wavelengths) and a rotation-invariant uniform
  LBP histogram (8 neighbours, radius 1) on a 32 x 32 resampled tile;
* :class:`TileCNN`, a small convolutional network whose weights the user provides as a local torch
  state dict (``weights_path``), loaded with ``torch.load(..., weights_only=True)``.

The raw features are standardised and reduced by PCA.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from experimat._errors import ExperimatWarning, InvalidInputError, MissingSlotError
from experimat._logging import logger

#: side (pixels) tiles are resampled to for the built-in extractor
TILE_SIZE = 32
#: side (pixels) tiles are resampled to for :class:`TileCNN`
CNN_TILE_SIZE = 64
#: ImageNet normalisation used by :class:`TileCNN`
CNN_MEAN = (0.485, 0.456, 0.406)
CNN_STD = (0.229, 0.224, 0.225)
TILE_DIR_MARKER = "experimat_tiles.json"


# --------------------------------------------------------------------------------------------
# locating the image
# --------------------------------------------------------------------------------------------
def find_image(adata, image_key: str, library_id: str | None = None) -> tuple[ImageView, float, float]:
    """The image, its scale factor (image px per full-resolution px) and the spot diameter (full-res px).

    Found by the one image rule of plots and methods (:func:`experimat.methods._image.resolve_image_key`:
    ``uns['spatial'][library_id]['images'][image_key]``, ``hires`` falling back to ``lowres``).
    """
    from experimat.methods._image import resolve_image_key

    res = resolve_image_key(adata, image_key, library_id=library_id)
    diameter = res.spot_diameter_fullres
    if diameter is None:
        raise MissingSlotError(
            f"'spot_diameter_fullres' missing in adata.uns['spatial'][{res.library_id!r}]['scalefactors'] "
            f"(found {list(res.entry.get('scalefactors') or {})}); tiles are cut at the spot diameter."
        )
    return ImageView(res.image), res.scalefactor, float(diameter)


class ImageView:
    """An image kept in its stored dtype; tiles are converted to float RGB in [0, 1] one batch at a time
    (a full-resolution H&E image is never copied as a whole)."""

    def __init__(self, img: np.ndarray) -> None:
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
            raise InvalidInputError(f"the tissue image must be H x W x 3 (RGB); got shape {img.shape}.")
        self.img = img
        self.shape = img.shape[:2]
        if np.issubdtype(img.dtype, np.integer):
            self.divisor = 65535.0 if img.dtype == np.uint16 else 255.0
        else:
            self.divisor = 255.0 if float(np.nanmax(img)) > 1.0 + 1e-6 else 1.0

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Tiles ``img[rows[b, i], cols[b, j]]`` as float32 ``(b, h, w, 3)`` in [0, 1]."""
        t = self.img[rows[:, :, None], cols[:, None, :]]
        if t.ndim == 3:
            t = t[..., None]
        if t.shape[-1] == 1:
            t = np.repeat(t, 3, axis=-1)
        t = t[..., :3].astype(np.float32) / np.float32(self.divisor)
        return np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)


def _as_rgb01(img: np.ndarray) -> np.ndarray:
    """The whole image as ``H x W x 3`` float32 in [0, 1] (uint8 scaled; grey replicated; alpha dropped)."""
    view = ImageView(np.asarray(img))
    h, w = view.shape
    return view.gather(np.arange(h)[None, :], np.arange(w)[None, :])[0]


def iter_tiles(
    img: ImageView | np.ndarray, centres_px: np.ndarray, side: int, batch_size: int = 256
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, tiles)`` with ``tiles`` of shape ``(b, side, side, 3)``; borders repeat edge pixels."""
    view = img if isinstance(img, ImageView) else ImageView(np.asarray(img))
    h, w = view.shape
    offs = np.arange(side) - side // 2
    for start in range(0, centres_px.shape[0], batch_size):
        c = np.rint(centres_px[start : start + batch_size]).astype(np.int64)
        rows = np.clip(c[:, 1:2] + offs[None, :], 0, h - 1)
        cols = np.clip(c[:, 0:1] + offs[None, :], 0, w - 1)
        yield start, view.gather(rows, cols)


# --------------------------------------------------------------------------------------------
# the built-in extractor
# --------------------------------------------------------------------------------------------
def _gabor_bank(size: int = 7) -> np.ndarray:
    """Real Gabor kernels, 4 orientations x 2 wavelengths, zero mean, unit L1 norm."""
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    kernels = []
    for wavelength in (3.0, 6.0):
        sigma = 0.56 * wavelength
        for theta in np.arange(4) * np.pi / 4:
            xr = x * np.cos(theta) + y * np.sin(theta)
            yr = -x * np.sin(theta) + y * np.cos(theta)
            k = np.exp(-(xr**2 + yr**2) / (2 * sigma**2)) * np.cos(2 * np.pi * xr / wavelength)
            k -= k.mean()
            k /= np.abs(k).sum()
            kernels.append(k)
    return np.stack(kernels).astype(np.float32)


#: names of the built-in features, in column order
def builtin_feature_names() -> list[str]:
    names = []
    for stat in ("mean", "sd", "q10", "q50", "q90"):
        names += [f"{c}_{stat}" for c in "RGB"]
    names += [f"od{c}_mean" for c in "RGB"]
    names += ["grad_mean", "grad_sd"]
    names += [f"gabor{w}_{o}_{s}" for w in (3, 6) for o in (0, 45, 90, 135) for s in ("mean", "sd")]
    names += [f"lbp_{i}" for i in range(10)]
    return names


def _lbp_riu2(grey, torch):
    """Rotation-invariant uniform LBP codes (0..9) for 8 neighbours at radius 1; ``grey`` is (B,1,H,W)."""
    pad = torch.nn.functional.pad(grey, (1, 1, 1, 1), mode="replicate")
    centre = pad[:, :, 1:-1, 1:-1]
    h, w = grey.shape[-2:]
    shifts = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]  # circular order
    bits = torch.stack(
        [(pad[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] >= centre).to(torch.int64) for dy, dx in shifts], 0
    )
    n_ones = bits.sum(0)
    transitions = (bits != torch.roll(bits, 1, dims=0)).sum(0)
    return torch.where(transitions <= 2, n_ones, torch.full_like(n_ones, 9))


def builtin_features(tiles: np.ndarray) -> np.ndarray:
    """Built-in morphology features of a batch of tiles ``(b, s, s, 3)`` in [0, 1] -> ``(b, 46)``."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).permute(0, 3, 1, 2)
        if t.shape[-1] != TILE_SIZE:
            t = F.interpolate(t, size=(TILE_SIZE, TILE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        t = t.clamp(0.0, 1.0)
        b = t.shape[0]
        flat = t.reshape(b, 3, -1)
        q = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9]), dim=2)  # (3 quantiles, b, 3)
        feats = [flat.mean(2), flat.std(2, unbiased=False), q[0], q[1], q[2]]
        feats.append((-torch.log(flat.clamp(min=1.0 / 255.0))).mean(2))
        grey = 0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        gpad = F.pad(grey, (1, 1, 1, 1), mode="replicate")
        gx = F.conv2d(gpad, sobel[None, None])
        gy = F.conv2d(gpad, sobel.T[None, None])
        mag = torch.sqrt(gx**2 + gy**2).reshape(b, -1)
        feats += [mag.mean(1, keepdim=True), mag.std(1, unbiased=False, keepdim=True)]
        bank = torch.from_numpy(_gabor_bank())[:, None]
        half = bank.shape[-1] // 2
        resp = (
            F.conv2d(F.pad(grey, (half, half, half, half), mode="replicate"), bank).abs().reshape(b, bank.shape[0], -1)
        )
        gab = torch.stack([resp.mean(2), resp.std(2, unbiased=False)], dim=2).reshape(b, -1)
        feats.append(gab)
        codes = _lbp_riu2(grey, torch).reshape(b, -1)
        hist = F.one_hot(codes, 10).to(torch.float32).mean(1)
        feats.append(hist)
        return torch.cat(feats, dim=1).numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------
# the optional CNN
# --------------------------------------------------------------------------------------------
def _build_tile_cnn(torch):
    nn = torch.nn

    class TileCNN(nn.Module):
        """Small CNN for 3 x 64 x 64 tiles: 4 blocks ``Conv3x3 -> BatchNorm -> ReLU -> MaxPool2``
        with 32, 64, 128, 256 channels, then global average pooling -> 256 features.

        State-dict keys: ``features.{0,4,8,12}.{weight,bias}`` (convolutions) and
        ``features.{1,5,9,13}.{weight,bias,running_mean,running_var,num_batches_tracked}`` (batch norms).
        """

        channels = (32, 64, 128, 256)

        def __init__(self) -> None:
            super().__init__()
            layers: list[Any] = []
            c_in = 3
            for c in self.channels:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
                c_in = c
            self.features = nn.Sequential(*layers)

        def forward(self, x):
            return self.features(x).mean(dim=(2, 3))

    return TileCNN


def tile_cnn():
    """A fresh :class:`TileCNN` (random weights); train it or load your own state dict into it.

    Examples
    --------
    >>> import torch
    >>> from experimat.methods.domains.deepst import tile_cnn
    >>> net = tile_cnn()
    >>> torch.save(net.state_dict(), "tile_cnn.pt")  # doctest: +SKIP
    """
    import torch

    return _build_tile_cnn(torch)()


def load_tile_cnn(weights_path: str | Path):
    """:class:`TileCNN` with the weights of a local state-dict file (``torch.load(weights_only=True)``)."""
    import torch

    path = Path(weights_path)
    if not path.is_file():
        raise InvalidInputError(f"weights_path {str(path)!r} is not a file; pass a local torch state dict (.pt).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = tile_cnn()
    if not isinstance(state, dict):
        raise InvalidInputError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__}).")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad_shape:
        raise InvalidInputError(
            f"{str(path)!r} does not match the TileCNN architecture (see "
            "experimat.methods.domains.deepst.tile_cnn): "
            f"missing keys {missing[:6]}, unexpected keys {unexpected[:6]}, wrong shapes {bad_shape[:6]}."
        )
    net.load_state_dict(state)
    net.eval()
    return net


def cnn_features(net, tiles: np.ndarray, device) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=(CNN_TILE_SIZE, CNN_TILE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(CNN_MEAN)[None, :, None, None]
        std = torch.tensor(CNN_STD)[None, :, None, None]
        t = ((t - mean) / std).to(device)
        return net(t).to(torch.float64).cpu().numpy()


# --------------------------------------------------------------------------------------------
# tile storage (only with save_path)
# --------------------------------------------------------------------------------------------
class TileWriter:
    """Writes uint8 tiles into ``.npz`` shards under ``folder`` until ``max_bytes`` is reached."""

    def __init__(self, folder: Path, max_bytes: int, obs_names) -> None:
        self.folder = folder
        self.max_bytes = int(max_bytes)
        self.obs_names = np.asarray(obs_names).astype(str)
        self.written = 0
        self.n_tiles = 0
        self.full = False
        self.shards: list[str] = []
        if folder.exists():
            if not (folder / TILE_DIR_MARKER).is_file():
                raise InvalidInputError(
                    f"{str(folder)!r} exists and was not written by experimat; choose another save_path."
                )
            shutil.rmtree(folder)  # stale tiles of an earlier run
        folder.mkdir(parents=True)
        self._write_marker(complete=False)

    def _write_marker(self, *, complete: bool) -> None:
        info = {
            "n_tiles": self.n_tiles,
            "bytes": self.written,
            "shards": self.shards,
            "complete": complete,
            "truncated": self.full,
            "max_bytes": self.max_bytes,
            "format": "npz uint8 (b, side, side, 3)",
        }
        (self.folder / TILE_DIR_MARKER).write_text(json.dumps(info, indent=1))

    def add(self, start: int, tiles: np.ndarray) -> None:
        if self.full:
            return
        arr = np.rint(np.clip(tiles, 0, 1) * 255).astype(np.uint8)
        per_tile = arr[0].nbytes if len(arr) else 1
        room = (self.max_bytes - self.written) // per_tile
        if room < len(arr):
            arr = arr[: max(room, 0)]
            self.full = True
            warnings.warn(
                f"tile storage reached its bound of {self.max_bytes / 1e6:.0f} MB; later tiles are not written "
                "(features are still computed from all tiles).",
                ExperimatWarning,
                stacklevel=4,
            )
        if len(arr) == 0:
            return
        name = f"tiles_{start:08d}.npz"
        np.savez_compressed(self.folder / name, tiles=arr, obs_names=self.obs_names[start : start + len(arr)])
        self.shards.append(name)
        self.written += arr.nbytes
        self.n_tiles += len(arr)

    def close(self, *, ok: bool) -> None:
        if ok:
            self._write_marker(complete=True)
            logger.info(f"stored {self.n_tiles} tiles ({self.written / 1e6:.1f} MB) in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def raw_image_features(
    img: ImageView | np.ndarray,
    centres_px: np.ndarray,
    side: int,
    *,
    net=None,
    device="cpu",
    writer: TileWriter | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Stream the tiles and return the raw (not yet reduced) features ``(n_spots, n_features)``."""
    out = []
    ok = False
    try:
        for start, tiles in iter_tiles(img, centres_px, side, batch_size):
            if writer is not None:
                writer.add(start, tiles)
            out.append(builtin_features(tiles) if net is None else cnn_features(net, tiles, device))
        ok = True
    finally:
        if writer is not None:
            writer.close(ok=ok)
    return np.vstack(out)


def reduce_features(feats: np.ndarray, n_components: int = 50) -> np.ndarray:
    """Standardise the columns and keep the leading principal components (deterministic signs)."""
    x = np.asarray(feats, dtype=np.float64)
    sd = x.std(0)
    x = np.divide(x - x.mean(0), sd, out=np.zeros_like(x), where=sd > 1e-12)
    n_comp = int(max(1, min(n_components, x.shape[0] - 1, x.shape[1])))
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(1)])
    signs[signs == 0] = 1.0
    return (u[:, :n_comp] * s[:n_comp]) * signs[:n_comp]
