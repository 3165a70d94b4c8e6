import pytest
import torch

from anycost.cost import check_reported_macs, count_macs, module_macs
from anycost.models.static import StaticModel
from anycost.eval import OperatingPoint
from anycost.models import create_model
from anycost.routing import BatchRouter, gather_rows, scatter_rows
from toy import TwoStage


def test_flop_counter_unit_is_two_per_mac():
    lin = torch.nn.Linear(5, 3, bias=False)
    assert count_macs(lin, torch.zeros(4, 5)) == 4 * 5 * 3


def test_per_sample_accounting_matches_known_fraction():
    m = TwoStage()
    x = torch.randn(8, 1, 8, 8)
    mask = [True, False, False, True, False, True, False, False]  # 3 of 8 continue
    out = m.infer(x, OperatingPoint("m", {"continue_mask": mask}))
    cheap, full = m.c1 + m.h1, m.c1 + m.h1 + m.c2 + m.h2
    assert out.macs.tolist() == [full if k else cheap for k in mask]
    assert out.path.tolist() == [int(k) for k in mask]
    # routed rows got stage-2 logits, the others kept stage-1 logits
    with torch.no_grad():
        ref1, ref2 = m.head1(m.stage1(x)), m.head2(m.stage2(m.stage1(x)))
    for i, k in enumerate(mask):
        assert torch.allclose(out.logits[i], (ref2 if k else ref1)[i], atol=1e-5)


@pytest.mark.parametrize("frac", [0.0, 0.25, 1.0])
def test_flop_counter_check_passes_for_honest_model(frac):
    chk = check_reported_macs(TwoStage(), torch.randn(16, 1, 8, 8), OperatingPoint("f", {"continue_fraction": frac}))
    assert chk.ok and chk.rel_err < 1e-9, str(chk)


def test_flop_counter_check_catches_a_model_that_forgets_a_stage():
    chk = check_reported_macs(TwoStage(honest=False), torch.randn(16, 1, 8, 8), OperatingPoint("f", {"continue_fraction": 0.5}))
    assert not chk.ok and chk.counted > chk.reported


def test_routing_really_skips_work():
    # with nobody continuing, stage 2 never runs: FlopCounterMode sees only stage 1 + head 1
    m = TwoStage()
    chk = check_reported_macs(m, torch.randn(10, 1, 8, 8), OperatingPoint("f", {"continue_fraction": 0.0}))
    assert chk.counted == 10 * (m.c1 + m.h1)


def test_static_wrapper_reports_constant_macs():
    net = create_model("test_resnet", in_chans=1, num_classes=10)
    s = StaticModel(net, (1, 8, 8))
    assert s.macs_per_sample == net.declared_macs((1, 8, 8))
    assert check_reported_macs(s, torch.randn(5, 1, 8, 8)).ok


def test_module_macs_restores_training_mode():
    net = create_model("test_resnet", in_chans=1)
    net.train()
    module_macs(net, (1, 8, 8))
    assert net.training


def test_router_gather_scatter_roundtrip():
    r = BatchRouter(6)
    h = torch.arange(6.0)[:, None]
    leave = torch.tensor([False, True, False, False, True, False])
    rows, pos = r.leave(leave)
    assert rows.tolist() == [1, 4] and pos.tolist() == [1, 4]
    (h,) = r.keep(leave, h)
    assert r.rows.tolist() == [0, 2, 3, 5] and h.squeeze(1).tolist() == [0, 2, 3, 5]
    leave2 = torch.tensor([True, False, False, True])
    rows2, _ = r.leave(leave2)
    assert rows2.tolist() == [0, 5]
    sub, pos = gather_rows(torch.arange(6.0), torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool))
    assert scatter_rows(torch.zeros(6), pos, sub * 10).tolist() == [0, 0, 20, 0, 0, 50]


def test_trainable_macs_counts_only_layers_that_learn():
    """A frozen backbone under trained heads (two-stage exits) pays no backward; a module
    with parameters of its own and children counts only its own work, whether its
    children are called directly or through a container that is never called."""
    import torch.nn as nn

    from anycost.cost import trainable_macs

    full = create_model("ee_resnet20", mode="joint", exits="1+3+5", head="branch")
    heads = create_model("ee_resnet20", mode="heads", exits="1+3+5", head="branch")
    total = module_macs(heads, (3, 32, 32))
    assert trainable_macs(full, (3, 32, 32)) == total
    h = sum(module_macs(hd, tuple(s)) for hd, s in zip(heads.heads, [(16, 32, 32), (32, 16, 16), (32, 16, 16)]))
    assert trainable_macs(heads, (3, 32, 32)) == h < total / 3
    from anycost.train import training_macs_per_image

    assert training_macs_per_image(heads, None, (3, 32, 32)) == total + 2 * h
    assert training_macs_per_image(full, heads, (3, 32, 32)) == 4 * total  # the teacher: one more forward
    for name in ("cnmm_d8", "lcnet_resnet20"):  # containers (ModuleList) and modules with own parameters
        m = create_model(name)
        assert trainable_macs(m, (3, 32, 32)) == module_macs(m, (3, 32, 32))

    class Scaled(nn.Module):  # own parameter, own matmul, and a child conv
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))
            self.convs = nn.ModuleList([nn.Conv2d(1, 4, 3, padding=1)])

        def forward(self, x):
            h = self.convs[0](x).mean((2, 3))  # (B, 4)
            return h @ self.w

    m = Scaled()
    conv = module_macs(m.convs[0], (1, 8, 8))
    assert trainable_macs(m, (1, 8, 8)) == conv + 16
    m.convs.requires_grad_(False)
    assert trainable_macs(m, (1, 8, 8)) == 16
