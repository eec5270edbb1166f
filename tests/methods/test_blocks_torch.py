"""The shared torch blocks (experimat.methods._torch): device, threads, mini-batches, the training loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experimat.methods._torch import RowAdam, minibatches, torch_device, torch_threads, train  # noqa: E402


def test_device_cpu_when_gpu_not_wanted():
    assert torch_device(use_gpu=False).type == "cpu"
    assert torch_device(use_gpu=True).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_threads_set_and_restored():
    old = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    with torch_threads(None):
        assert torch.get_num_threads() == old
    with torch_threads(1, device="cuda"):  # GPU runs leave the CPU thread count alone
        assert torch.get_num_threads() == old


def test_minibatches_full_batch_draws_no_random_numbers():
    rng = np.random.default_rng(0)
    assert list(minibatches(10, None, rng)(0)) == [None]
    assert list(minibatches(10, 10, rng)(3)) == [None]
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)


def test_minibatches_cover_every_observation_once_per_epoch():
    for rng in (np.random.default_rng(1), torch.Generator().manual_seed(1)):
        batches = minibatches(11, 4, rng, sort=True)
        for epoch in range(3):
            got = [np.asarray(b) for b in batches(epoch)]
            assert [len(b) for b in got] == [4, 4, 3]
            assert sorted(np.concatenate(got).tolist()) == list(range(11))
            assert all((np.diff(b) > 0).all() for b in got)
    # a tiny last batch is dropped only when there is more than one batch; full_batch=False shuffles
    got = list(minibatches(9, 4, torch.Generator().manual_seed(0), min_size=3)(0))
    assert [len(b) for b in got] == [4, 4]
    got = list(minibatches(5, 8, torch.Generator().manual_seed(0), full_batch=False, min_size=3)(0))
    assert len(got) == 1 and sorted(got[0].tolist()) == list(range(5))


def test_train_least_squares_matches_closed_form_and_records_history():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    beta = torch.tensor([1.0, -2.0, 0.5])
    y = x @ beta
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)

    def loss_fn(idx, epoch):
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        return ((xb @ w - yb) ** 2).mean()

    hist = train(loss_fn, opt, minibatches(64, 16, np.random.default_rng(0)), max_epochs=300, n_obs=64, name="ls")
    assert len(hist) == 300 and hist[-1] < 1e-4 * hist[0]
    np.testing.assert_allclose(w.detach().numpy(), beta.numpy(), atol=1e-2)


def test_train_epoch_loss_reductions_and_early_stop():
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)  # no learning: every batch's loss is its constant
    losses = {0: 1.0, 1: 3.0, 2: 8.0}

    def loss_fn(b, epoch):
        return w.sum() + losses[b]

    def batches(epoch):
        return [0, 1, 2]

    lens = {0: 5, 1: 5, 2: 2}
    obs = train(loss_fn, opt, batches, max_epochs=2, n_obs=12, name="t", batch_len=lens.get)
    assert obs == pytest.approx([(5 * 1 + 5 * 3 + 2 * 8) / 12] * 2)
    mean = train(loss_fn, opt, batches, max_epochs=2, n_obs=12, name="t", epoch_loss="batch_mean")
    assert mean == pytest.approx([4.0, 4.0])
    stopped = train(loss_fn, opt, batches, max_epochs=50, n_obs=12, name="t", batch_len=lens.get, early_stop=lambda h: len(h) >= 3)
    assert len(stopped) == 3


def test_train_clips_the_gradient_norm():
    w = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    target = torch.tensor([300.0, -400.0, 0.0, 0.0])  # gradient of 0.5 |w - t|^2 at 0: norm 500

    def loss_fn(b, epoch):
        return 0.5 * ((w - target) ** 2).sum()

    train(loss_fn, opt, minibatches(1, None, None), max_epochs=1, n_obs=1, name="clip", clip_grad_norm=5.0)
    np.testing.assert_allclose(w.detach().numpy(), [3.0, -4.0, 0.0, 0.0], rtol=1e-6)  # one step of norm 5


def _quadratic_grads(n_steps: int, shape, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n_steps)]


def test_row_adam_with_dense_gradients_is_adam():
    w_ref = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
    w = w_ref.detach().clone().requires_grad_()
    ref, ours = torch.optim.Adam([w_ref], lr=0.05), RowAdam([w], lr=0.05)
    for grad in _quadratic_grads(20, (6, 3)):
        w_ref.grad, w.grad = grad.clone(), grad.clone()
        ref.step()
        ours.step()
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


def test_row_adam_updates_only_the_rows_of_a_sparse_gradient():
    """Through a sparse embedding lookup only the batch's rows move; each row follows Adam over the steps it was
    in a batch (its own bias correction), exactly as Adam on that row alone."""
    w0 = torch.randn(10, 2, generator=torch.Generator().manual_seed(2))
    w = w0.clone().requires_grad_()
    opt = RowAdam([w], lr=0.1)
    batches = [torch.tensor([0, 3, 4]), torch.tensor([3, 9]), torch.tensor([0, 9])]
    targets = _quadratic_grads(3, (10, 2), seed=3)
    for b, t in zip(batches, targets):
        opt.zero_grad()
        rows = torch.nn.functional.embedding(b, w, sparse=True)
        (0.5 * ((rows - t[b]) ** 2).sum()).backward()
        assert w.grad.is_sparse
        opt.step()
    untouched = [1, 2, 5, 6, 7, 8]
    assert torch.equal(w.detach()[untouched], w0[untouched])
    assert opt.state[w]["row_step"].tolist() == [2, 0, 0, 2, 1, 0, 0, 0, 0, 2]
    for r in (0, 3, 4, 9):  # the same row with Adam alone, over the steps it was in
        v = w0[r].clone().requires_grad_()
        adam = torch.optim.Adam([v], lr=0.1)
        for b, t in zip(batches, targets):
            if r in b.tolist():
                adam.zero_grad()
                (0.5 * ((v - t[r]) ** 2).sum()).backward()
                adam.step()
        torch.testing.assert_close(w.detach()[r], v.detach(), rtol=1e-5, atol=1e-6)


def test_train_steps_every_optimiser_of_a_list():
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(4, 1, requires_grad=True)
    opts = [torch.optim.SGD([a], lr=0.5), RowAdam([b], lr=0.1)]

    def loss_fn(idx, epoch):
        rows = b if idx is None else torch.nn.functional.embedding(torch.as_tensor(idx), b, sparse=True)
        return ((a - 1.0) ** 2).sum() + ((rows - 2.0) ** 2).sum()

    train(loss_fn, opts, lambda e: [np.array([1, 2])], max_epochs=3, n_obs=4, name="two")
    assert float(a.detach()) > 0 and (b.detach()[[1, 2]] > 0).all() and (b.detach()[[0, 3]] == 0).all()
