"""optim.Adam and optim.ReduceOnPlateau against torch.optim, step by step."""
import sys

import torch

from cellassign_nf.optim import Adam, ReduceOnPlateau


def test_adam_and_plateau_follow_torch_optim():
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=g), torch.randn(4, generator=g), torch.zeros(2, 0)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    opt, ref_opt = Adam(ours, lr=0.1), torch.optim.Adam(ref, lr=0.1)
    sched = ReduceOnPlateau(opt, factor=0.5, patience=2, threshold=1e-3)
    ref_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="max", factor=0.5, patience=2, threshold=1e-3)
    target = torch.randn(5, 3, generator=g)
    # torch counts an equal negative value as better (best * (1 + threshold) < best): worsen to trigger
    monitored = [-5.0, -4.0, -4.5, -4.6, -4.7, -3.0, -3.5, -3.6, -3.7, -3.8, -2.0]
    for epoch, value in enumerate(monitored):
        for _ in range(3):
            for params, o in ((ours, opt), (ref, ref_opt)):
                o.zero_grad()
                loss = ((params[0] - target) ** 4).sum() + torch.sin(params[1]).sum() * (epoch + 1)
                loss.backward()
                o.step()
        sched.step(value)
        ref_sched.step(value)
        assert sched.lr == ref_opt.param_groups[0]["lr"], epoch
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert sched.lr == 0.1 * 0.5 ** 2  # halved twice by the sequence above


def test_training_does_not_import_dynamo():
    # constructing a torch.optim optimiser imports torch._dynamo (seconds); a fit must not
    import subprocess

    code = ("import sys, torch; from cellassign_nf import CellAssign, marker_list_to_matrix;"
            "from cellassign_nf.simulate import simulate;"
            "m = {'A': ['a1', 'a2'], 'B': ['b1', 'b2']};"
            "CellAssign(simulate(m, n_cells=50, n_other_genes=5, seed=1), marker_list_to_matrix(m),"
            " size_factor_key='size_factor').train(max_epochs=2, n_restarts=1, progress=False, device='cpu');"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
