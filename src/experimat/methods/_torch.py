"""Torch device, CPU threads and the one training loop of the torch methods.

Every torch method picks its device with :func:`torch_device`, limits its CPU threads with
:func:`torch_threads` and trains through :func:`train`: epochs over :func:`minibatches`, an optimiser
step per batch, a loss history, progress through :class:`experimat._logging.ProgressBar` and an
optional early stop. :class:`RowAdam` is Adam for per-observation parameters trained in mini-batches
(a step updates only the batch's rows). ``torch`` is imported inside the functions (never at module import).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

from experimat._logging import ProgressBar, logger
from experimat._optional import import_optional


def torch_device(use_gpu: bool = True):
    """The torch device to use: CUDA when present and ``use_gpu``, else CPU."""
    torch = import_optional("torch", purpose="this method")
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _is_cpu(device) -> bool:
    return device is None or getattr(device, "type", str(device)) == "cpu"


@contextmanager
def torch_threads(n: int | None, device=None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, restoring the previous count afterwards.

    ``n=None`` leaves the count as it is; on a GPU ``device`` nothing changes. One thread makes a
    seeded CPU fit bit-for-bit reproducible (multi-threaded BLAS may change the order of sums) and is
    much faster than a spinning thread pool on small tensors or a busy machine.
    """
    if n is None or not _is_cpu(device):
        yield
        return
    torch = import_optional("torch", purpose="this method")
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def minibatches(
    n_obs: int,
    batch_size: int | None,
    rng: Any,
    *,
    full_batch: bool = True,
    sort: bool = False,
    min_size: int = 1,
    device=None,
) -> Callable[[int], Iterable[Any]]:
    """The batches of each epoch, as a function of the epoch number for :func:`train`.

    With ``full_batch`` and ``batch_size`` ``None`` or ``>= n_obs`` every epoch is one batch ``None``
    (all observations, no random numbers drawn). Otherwise each epoch draws a permutation from
    ``rng`` (a :class:`numpy.random.Generator` gives NumPy index arrays, a ``torch.Generator`` gives
    CPU tensors moved to ``device``) and cuts it into consecutive batches of ``batch_size``
    (``sort``: indices sorted within a batch). When there is more than one batch, a last batch
    smaller than ``min_size`` is skipped (as scvi-tools drops a tiny last batch).
    """
    bs = n_obs if batch_size is None else int(batch_size)
    if full_batch and bs >= n_obs:
        return lambda epoch: [None]

    def epoch_batches(epoch: int) -> Iterator[Any]:
        if isinstance(rng, np.random.Generator):
            order = rng.permutation(n_obs)
        else:
            import torch

            order = torch.randperm(n_obs, generator=rng)
            if device is not None:
                order = order.to(device)
        for s in range(0, n_obs, bs):
            idx = order[s : s + bs]
            if len(idx) < min_size and n_obs > bs:
                continue
            yield np.sort(idx) if sort else idx

    return epoch_batches


class RowAdam:
    """Adam for per-observation ("local") parameters: a step updates only the rows that have a gradient.

    Each parameter is a tensor with the observations on its first axis. Read it through
    ``torch.nn.functional.embedding(idx, param, sparse=True)``: its gradient is then sparse, holding only
    the rows ``idx`` of the mini-batch, and :meth:`step` updates those rows' moments and values and
    nothing else, so a step costs the batch, not all observations (dense Adam moves every row at every
    step, an epoch then costs ``(n / batch) x n``). Each row keeps its own step count for the bias
    corrections, so a row follows Adam over the steps where it was in a batch (the "lazy Adam" of
    sparse embeddings, with per-row bias correction). A dense gradient updates every row; when every
    step has a dense gradient the updates are those of :class:`torch.optim.Adam` (same ``lr``, ``betas``,
    ``eps``), up to float rounding. Use it with :func:`train` next to an ordinary optimiser for the
    global parameters (``train(loss, [adam, row_adam], ...)``).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        params = list(params)
        if not params:
            raise ValueError("RowAdam got no parameters.")
        self.param_groups = [{"params": params, "lr": float(lr), "betas": tuple(betas), "eps": float(eps)}]
        self.state: dict[Any, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (always set to ``None``: a sparse gradient cannot be zeroed in place)."""
        for p in self.param_groups[0]["params"]:
            p.grad = None

    def step(self) -> None:
        import torch

        group = self.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        with torch.no_grad():
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                                          "row_step": torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)}
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, g = grad.indices()[0], grad.values()
                else:
                    rows, g = torch.arange(p.shape[0], device=p.device), p.grad
                t = st["row_step"].index_select(0, rows) + 1
                m = st["exp_avg"].index_select(0, rows).lerp_(g, 1 - b1)
                v = st["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
                bshape = (-1,) + (1,) * (p.dim() - 1)
                td = t.to(torch.float64)
                step_size = (lr / (1 - b1**td)).to(p.dtype).view(bshape)
                bc2_sqrt = torch.sqrt(1 - b2**td).to(p.dtype).view(bshape)
                update = m / (v.sqrt() / bc2_sqrt).add_(eps) * step_size
                p.index_add_(0, rows, update, alpha=-1.0)
                st["exp_avg"].index_copy_(0, rows, m)
                st["exp_avg_sq"].index_copy_(0, rows, v)
                st["row_step"].index_copy_(0, rows, t)


def train(
    loss_fn: Callable[[Any, int], Any],
    optimizer: Any,
    batches: Callable[[int], Iterable[Any]],
    *,
    max_epochs: int,
    n_obs: int,
    name: str,
    epoch_loss: Literal["batch_mean", "obs_mean"] = "obs_mean",
    batch_len: Callable[[Any], int] | None = None,
    threads: int | None = None,
    device=None,
    early_stop: Callable[[list[float]], bool] | None = None,
    clip_grad_norm: float | None = None,
) -> list[float]:
    """Train for up to ``max_epochs`` epochs and return the loss per epoch.

    Each epoch iterates ``batches(epoch)``; for each batch ``loss_fn(batch, epoch)`` returns a scalar
    loss tensor, and the loop zeroes the gradients, back-propagates and steps ``optimizer`` (one
    optimiser or a list of them, e.g. Adam for global parameters and :class:`RowAdam` for per-observation
    ones; each is zeroed and stepped). The
    epoch's loss is the mean of its batch losses (``"batch_mean"``, over ``ceil(n_obs / batch)``
    batches) or their mean weighted by batch length per observation (``"obs_mean"``: the summed
    ``loss * len(batch)`` divided by ``n_obs``; a ``None`` batch has ``n_obs`` rows). ``threads``
    and ``device`` go to :func:`torch_threads`; ``early_stop(history)``, checked after every epoch,
    ends training when it returns True; ``clip_grad_norm`` clips the gradients of the optimiser's
    parameters to that total norm before each step.
    """
    history: list[float] = []
    t0 = time.perf_counter()
    size = batch_len or (lambda b: n_obs if b is None else len(b))
    optimizers = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
    clip = None
    if clip_grad_norm:
        torch = import_optional("torch", purpose="training")
        params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]

        def clip() -> None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)

    with torch_threads(threads, device), ProgressBar(max_epochs, name) as bar:
        for epoch in range(max_epochs):
            total, count = 0.0, 0
            for batch in batches(epoch):
                loss = loss_fn(batch, epoch)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    clip()
                for opt in optimizers:
                    opt.step()
                value = float(loss.detach())
                if epoch_loss == "obs_mean":
                    total += value * size(batch)
                else:
                    total += value
                    count += 1
            history.append(total / n_obs if epoch_loss == "obs_mean" else total / max(count, 1))
            bar.update()
            if early_stop is not None and early_stop(history):
                break
    logger.debug(f"{name}: {len(history)} epochs in {time.perf_counter() - t0:.1f} s")
    return history
