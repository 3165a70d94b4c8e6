import pytest
import torch

from anycost.cost import module_macs
from anycost.models import create_model, list_models, register_model


def _input_size(name):
    return (1, 8, 8) if name.startswith("test_") else (3, 32, 32)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        @register_model(name="resnet20")
        def resnet20(**kw):  # noqa: F811
            return None


def test_unknown_model_is_an_error():
    with pytest.raises(KeyError, match="unknown model 'resnet21'"):
        create_model("resnet21")


def test_bad_model_arguments_are_a_clear_error():
    with pytest.raises(ValueError, match="bad arguments for model 'resnet20'.*bogus"):
        create_model("resnet20", bogus=1)


def test_list_models_filters():
    assert "resnet20" in list_models("resnet*") and "test_resnet" not in list_models(include_test=False)


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    """Every registered model: forward shape, finite output, gradients reach every
    parameter, and declared MACs equal FlopCounterMode / 2."""
    torch.manual_seed(0)
    c, h, w = _input_size(name)
    kw = {"members": ["test_resnet", "test_resnet"], "input_hw": h} if name == "cascade" else {}
    m = create_model(name, num_classes=7, in_chans=c, **kw)
    # the zero-initialised residual BN would block gradients to conv1 on the first step
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
    # batch 8: hard-gated families (LC-Net) pass no gradient to a block every input skips;
    # with 8 inputs and keep probabilities near 0.95 at initialisation that does not happen
    x = torch.randn(8, c, h, w)
    out = m(x)
    assert out.shape == (8, 7) and torch.isfinite(out).all()
    if hasattr(m, "training_loss"):  # families train through their own loss (e.g. every exit)
        # a model that runs one sampled network per batch (residual CNMM) reaches every edge
        # over a few batches, not in one
        for _ in range(16 if getattr(m, "skips_per_batch", False) else 1):
            loss, _ = m.training_loss(x, torch.arange(8) % 7, criterion=torch.nn.CrossEntropyLoss())
            loss.backward()
    else:
        out.logsumexp(1).sum().backward()
    # a cascade's members are trained apart, each as a static network; its forward is the last one
    params = m.nets[-1].named_parameters() if m.family == "cascade" else m.named_parameters()
    no_grad = [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reaches {no_grad[:3]}"
    if hasattr(m, "declared_macs"):
        assert m.declared_macs((c, h, w)) == module_macs(m, (c, h, w))


@pytest.mark.parametrize("name,published", [("resnet20", 40.8e6), ("resnet56", 125.75e6)])
def test_resnet_macs_match_literature(name, published):
    macs = module_macs(create_model(name), (3, 32, 32))
    assert abs(macs - published) / published < 0.01


def test_import_has_no_side_effects():
    import subprocess
    import sys

    code = "import sys, anycost; assert 'torch' not in sys.modules; print(anycost.create_model('resnet8').depth)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "8", p.stderr
