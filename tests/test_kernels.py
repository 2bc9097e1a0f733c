"""The fused CPU kernel (kernels.py) against the plain PyTorch chain (model.nb_terms), which is
the reference: values and gradients, over the regimes the kernel treats differently."""
import re

import numpy as np
import pytest
import torch

from cellassign_nf import CellAssign, kernels, marker_list_to_matrix
from cellassign_nf.model import PHI_LOWER_BOUND, basis_means, nb_terms
from cellassign_nf.simulate import simulate


def _layout(G: int, C: int, gen: torch.Generator):
    """A marker layout with shared markers: each type gets 3-5 genes, some genes in two types."""
    rho = torch.zeros(G, C)
    for c in range(C):
        rho[torch.randperm(G, generator=gen)[: 3 + c % 3], c] = 1.0
    mg, mt = rho.nonzero(as_tuple=True)
    W = torch.cat([1.0 - rho, torch.nn.functional.one_hot(mt, C).float()])
    return kernels.layout(G, C, mg, mt), torch.cat([torch.arange(G), mg]), W


def _both(x, offset, col, log_a, v, b, lay, gene, W):
    """(out, d/d offset, d/d col, d/d log_a) of sum(grad * out): the plain chain in float64 from the
    same float32 inputs (the reference), the fused kernel in float32."""
    grad = torch.randn(x.shape[0], lay.C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = []
    for fused in (False, True):
        dtype = torch.float32 if fused else torch.float64
        off, cl, la = (t.to(dtype).clone().requires_grad_() for t in (offset, col, log_a))
        if fused:
            ll = kernels.fused_log_likelihood(x, off, cl, la, lay, v, b, PHI_LOWER_BOUND)
        else:
            ll = nb_terms(x.double()[:, gene], off[:, gene] + cl, la, v, b) @ W.double()
        (ll * grad.to(dtype)).sum().backward()
        out.append([t.detach().double() for t in (ll, off.grad, cl.grad, la.grad)])
    return out


def _close(ref, got, rtol):
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=rtol, atol=rtol * float(r.abs().max()))


CASES = ["small counts", "large counts", "mean beyond the centres", "tiny phi", "huge phi", "wide rows",
         "mostly zeros", "no zeros"]


@pytest.mark.parametrize("case", CASES)
def test_fused_kernel_equals_plain_chain(case):
    """Values and all three gradients; each case drives one part of the kernel to its edge (the
    shift/Stirling lgamma, the RBF recursion's range, phi at its bound, rows longer than a block,
    rows that are not a multiple of the vector width, blocks of nearly all zero counts, which skip
    lgamma and digamma, and of none)."""
    g = torch.Generator().manual_seed(0)
    M, G, C = 64, 37, 6
    if case == "wide rows":  # 2 blocks of 256 columns per row and a ragged end
        G, C = 400, 9
    lay, gene, W = _layout(G, C, g)
    v, b = basis_means(60.0)
    x = torch.poisson(torch.rand(M, G, generator=g) * 6, generator=g)
    offset = 0.5 * torch.randn(M, 1, generator=g) + 0.3 * torch.randn(M, G, generator=g)
    col = torch.randn(lay.width, generator=g) + 1.0
    log_a = 0.5 * torch.randn(10, generator=g)
    if case == "large counts":  # x far above the centres, lgamma of large arguments
        x = torch.poisson(torch.rand(M, G, generator=g) * 400 + 24, generator=g)
        offset = torch.log(x + 1) + 0.3 * torch.randn(M, G, generator=g)
        col = 0.1 * col
    elif case == "mean beyond the centres":  # t up to its limit: e[i] underflow, no NaN
        offset = offset + torch.rand(M, G, generator=g) * 8.0
    elif case == "tiny phi":  # phi at its lower bound
        log_a = log_a - 30.0
    elif case == "huge phi":
        log_a = log_a + 24.0
    elif case == "mostly zeros":
        x = torch.poisson(torch.rand(M, G, generator=g) * 0.1, generator=g)
    elif case == "no zeros":
        x = x + 1.0
    zeros = float((x == 0).float().mean())
    assert {"mostly zeros": zeros > 0.9, "no zeros": zeros == 0.0, "large counts": zeros < 0.01}.get(
        case, 0.1 < zeros < 0.9), zeros  # zero and non-zero counts in every block, or what the case says
    assert lay.width % 8 != 0  # a ragged end: the C loops pad rows to whole vectors
    ref, got = _both(x, offset, col, log_a, v, b, lay, gene, W)
    assert all(torch.isfinite(t).all() for t in got)
    if case == "huge phi":
        # phi log phi - (phi + x) log(phi + mu) cancels ~11 digits in either chain, and d/d log_a
        # (d term/d phi ~ 1e-10 times a ~ 1e10) is rounding in both: values and d/d offset, d/d col only
        _close(ref[:3], got[:3], rtol=1e-3)
    else:
        _close(ref, got, rtol=2e-5)


def test_fused_kernel_same_on_one_and_two_threads():
    g = torch.Generator().manual_seed(3)
    lay, gene, W = _layout(20, 4, g)
    x = torch.poisson(torch.rand(3000, 20, generator=g) * 5, generator=g)
    offset, col = torch.randn(3000, 20, generator=g), torch.randn(lay.width, generator=g)
    v, b = basis_means(30.0)
    results = []
    try:
        for n in (1, 2):
            kernels.set_threads(n)
            assert len(kernels._ranges(3000, lay.width)) == n
            results.append(_both(x, offset, col, torch.zeros(10), v, b, lay, gene, W)[1])
    finally:
        kernels.set_threads(None)
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


def test_fused_kernel_called_from_several_threads_at_once():
    """Fits in several threads of one process share the kernel's worker: each call must get its
    own rows' results, and no calling thread may add workers of its own."""
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(5)
    lay, _, _ = _layout(20, 4, g)
    v, b = basis_means(30.0)
    inputs = [(torch.poisson(torch.rand(2000, 20, generator=g) * 5, generator=g), torch.randn(2000, 20, generator=g),
               torch.randn(lay.width, generator=g)) for _ in range(6)]
    try:
        kernels.set_threads(2)
        alone = [kernels.fused_log_likelihood(x, o, c, torch.zeros(10), lay, v, b, PHI_LOWER_BOUND) for x, o, c in inputs]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda xoc: kernels.fused_log_likelihood(*xoc, torch.zeros(10), lay, v, b,
                                                                              PHI_LOWER_BOUND), inputs * 5))
        assert len(kernels._WORKERS) == 1
    finally:
        kernels.set_threads(None)
    for k, out in enumerate(together):
        torch.testing.assert_close(out, alone[k % 6], rtol=0, atol=0)


def test_fused_kernel_needs_equally_spaced_centres():
    lay = kernels.layout(2, 1, torch.tensor([0]), torch.tensor([0]))
    x = offset = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="equally spaced"):
        kernels.fused_log_likelihood(x, offset, torch.zeros(3), torch.zeros(3), lay, [0.0, 1.0, 3.0], 0.5,
                                     PHI_LOWER_BOUND)


def test_fused_kernel_checks_shapes_and_layout():
    lay = kernels.layout(2, 1, torch.tensor([0]), torch.tensor([0]))
    v, b = basis_means(10.0)
    with pytest.raises(ValueError, match=r"x and offset of shape \(M, 2\) and col of 3 entries"):
        kernels.fused_log_likelihood(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(3), torch.zeros(10), lay, v, b,
                                     PHI_LOWER_BOUND)
    with pytest.raises(ValueError, match=r"marker genes in \[0, G\)"):
        kernels.layout(2, 1, torch.tensor([2]), torch.tensor([0]))


MARKERS = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"], "C": ["c1", "c2", "c3"], "D": ["d1", "d2", "a1"]}


def test_fit_with_fused_kernel_equals_plain_fit():
    adata = simulate(MARKERS, n_cells=600, n_other_genes=20, batches=("b0", "b1"), seed=4)
    fits = [CellAssign(adata, marker_list_to_matrix(MARKERS), size_factor_key="size_factor", batch_key="batch")
            .train(fuse=fuse, device="cpu", n_restarts=1, seed=2, batch_size=128, max_epochs=8, early_stopping=False,
                   progress=False) for fuse in ("on", "off")]
    assert fits[0].module.fused and not fits[1].module.fused
    np.testing.assert_allclose(fits[0].history_table["train_loglik"], fits[1].history_table["train_loglik"], rtol=1e-5)
    np.testing.assert_allclose(fits[0].predict().to_numpy(), fits[1].predict().to_numpy(), atol=1e-4)


@pytest.mark.parametrize("case", ["covariates", "no covariates, no shrinkage", "types held fixed"])
def test_training_gradients_written_out_equal_autograd(case):
    """With the kernel a training step's gradients are written out (CellAssignModule.em_gradients_),
    not taken by autograd: every parameter's gradient must be autograd's on the same loss (the
    E step held fixed), and a parameter the loss does not reach must get none."""
    from cellassign_nf.model import CellAssignModule, gamma_from_joint

    gen = torch.Generator().manual_seed(3)
    G, C, M, n_train, P = 12, 4, 64, 1000, (2 if case == "covariates" else 0)
    rho = (torch.rand(G, C, generator=gen) < 0.3).float()
    x = torch.poisson(3.0 * torch.rand(M, G, generator=gen), generator=gen)
    log_s = 0.3 * torch.randn(M, generator=gen)
    D = torch.randn(M, P, generator=gen) if P else None
    v, b = basis_means(float(x.max()))
    module = CellAssignModule(rho, P, v, b, shrinkage=case != "no covariates, no shrinkage", generator=gen)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    if case == "types held fixed":
        module.hold_types_fixed_(CellAssignModule(rho, P, v, b, generator=gen))
    module.fused = True
    joint = module.joint_log_prob(x, log_s, D)
    loss = (-(gamma_from_joint(joint.detach()) * joint).sum() * (n_train / M) - module.log_prior()) / n_train
    module.zero_grad(set_to_none=True)
    loss.backward()
    expected = {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    out = module.em_gradients_(x, log_s, D, n_train)
    torch.testing.assert_close(out, joint.detach())
    for name, p in module.named_parameters():
        assert (p.grad is None) == (expected[name] is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6 * float(expected[name].abs().max()),
                                       msg=name)
    assert expected["theta_logit"] is not None and (expected["log_a"] is None) == (case == "types held fixed")


def _unbuilt(monkeypatch):
    """As if the package had been installed without a C compiler."""
    reason = "the fused CPU kernel (cellassign_nf._nbkernel) is not built (No module named 'x')"
    monkeypatch.setattr(kernels, "unavailable_reason", lambda: reason)
    monkeypatch.setattr(kernels, "_WARNED", set())
    return reason


def _small_model():
    adata = simulate(MARKERS, n_cells=300, n_other_genes=5, seed=1)
    return CellAssign(adata, marker_list_to_matrix(MARKERS), size_factor_key="size_factor")


def test_without_the_built_kernel_auto_trains_on_the_plain_chain_and_says_why(monkeypatch, caplog):
    reason = _unbuilt(monkeypatch)
    with caplog.at_level("WARNING", logger="cellassign_nf.kernels"):
        model = _small_model().train(device="cpu", n_restarts=2, max_epochs=2, progress=False)
    assert not model.module.fused
    assert caplog.text.count(f"{reason}; using the plain likelihood") == 1  # once, not once per restart


def test_fuse_on_without_the_built_kernel_is_an_error(monkeypatch):
    from cellassign_nf.errors import DeviceError

    reason = _unbuilt(monkeypatch)
    with pytest.raises(DeviceError, match=r"--fuse on: " + re.escape(reason)):
        _small_model().train(device="cpu", n_restarts=1, max_epochs=2, fuse="on", progress=False)


def test_training_with_the_kernel_gives_it_the_threads_and_restores_torch(monkeypatch):
    """While the kernel trains, torch runs on one thread and the kernel on all of them; after the
    fit both are as before."""
    seen = []
    real = kernels.fused_log_likelihood

    def spy(*args):
        seen.append((torch.get_num_threads(), kernels.threads()))
        return real(*args)

    monkeypatch.setattr(kernels, "fused_log_likelihood", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _small_model().train(device="cpu", n_restarts=1, max_epochs=2, progress=False)
        assert (1, 2) in seen and torch.get_num_threads() == 2 and kernels.threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_error_on_one_thread_waits_for_the_others():
    """The C code writes into buffers the calling frame owns: an error on the calling thread must
    not return before the other threads are done with them. The other threads finish only after
    the error was raised, however fast or slow this machine starts them."""
    import threading
    import time

    done, raised = [], threading.Event()

    def fn(i):
        if i == 0:
            raised.set()
            raise RuntimeError("range 0 failed")
        assert raised.wait(timeout=300), "range 0 never ran"
        time.sleep(0.5)  # while the error travels up: a _run that returns now leaves `done` empty
        done.append(i)

    with pytest.raises(RuntimeError, match="range 0 failed"):
        kernels._run(fn, [(0, 1), (1, 2), (2, 3)], lambda i, lo, hi: (i,))
    assert sorted(done) == [1, 2]


@pytest.mark.parametrize("fuse", ["auto", "off"])
def test_a_loaded_model_predicts_on_the_path_it_was_trained_with(tmp_path, fuse):
    """annotate loads the model file: it predicts with the kernel unless the fit asked for the
    plain chain, and both give the probabilities the fit gave."""
    model = _small_model().train(device="cpu", n_restarts=1, max_epochs=3, fuse=fuse, progress=False)
    model.save(tmp_path / "model.pt")
    loaded = CellAssign.load(tmp_path / "model.pt")
    assert loaded.module.fused is (fuse == "auto")
    adata = simulate(MARKERS, n_cells=300, n_other_genes=5, seed=1)
    np.testing.assert_allclose(loaded.predict(adata).to_numpy(), model.predict().to_numpy(), atol=1e-4)
