"""CustomResNet: size, torchsummary table, output shape, residual connections, logit scale."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from custom_resnet import CustomResNet
from modular.tools.notebook import print_model_summary

N_PARAMS = 6_575_370
SUMMARY_LAYERS = [
    "Conv2d", "BatchNorm2d", "ReLU",                                   # prep
    "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU",                      # layer1 X
    "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU",  # layer1 R1
    "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU",                      # layer2
    "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU",                      # layer3 X
    "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU",  # layer3 R2
    "MaxPool2d", "Linear",                                             # head
]
ROW = re.compile(r"^\s*([A-Za-z0-9_]+)-(\d+)\s+\[")


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def model() -> CustomResNet:
    torch.manual_seed(0)
    return CustomResNet().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def summary_text(model: nn.Module, capsys) -> str:
    """The table the notebook prints (``notebook.print_model_summary``: torchsummary on a copy)."""
    capsys.readouterr()
    print_model_summary(model)
    return capsys.readouterr().out


def test_trainable_parameter_count(model):
    assert trainable(model) == N_PARAMS
    assert all(p.requires_grad for p in model.parameters())


def test_summary_table_rows_and_total(model, capsys):
    text = summary_text(model, capsys)
    rows = [ROW.match(line) for line in text.splitlines()]
    rows = [m for m in rows if m]
    assert [m.group(1) for m in rows] == SUMMARY_LAYERS
    assert [int(m.group(2)) for m in rows] == list(range(1, 30))
    assert len(rows) == 29
    assert "Total params: 6,575,370" in text
    assert "Trainable params: 6,575,370" in text


def test_summary_leaves_the_model_alone(capsys):
    """The notebook prints the summary of the model it then trains: in train mode, channels_last and
    bf16 as the runtime prepared it. Summarising must not touch its BatchNorm statistics, its mode,
    dtype or layout (torchsummary runs a forward pass, which in train mode updates the statistics)."""
    model = CustomResNet().to(torch.bfloat16, memory_format=torch.channels_last).train()
    before = copy.deepcopy(model.state_dict())
    text = summary_text(model, capsys)
    assert "Total params: 6,575,370" in text
    assert model.training and model.prep[0].weight.dtype == torch.bfloat16
    assert model.prep[0].weight.is_contiguous(memory_format=torch.channels_last)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("n", [1, 2])
def test_output_shape(model, n):
    with torch.no_grad():
        out = model(torch.randn(n, 3, 32, 32))
    assert out.shape == (n, 10)
    assert out.dtype == torch.float32


def test_num_classes_sets_output_width():
    model = CustomResNet(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_output_shape_in_train_mode_and_backward():
    torch.manual_seed(0)
    model = CustomResNet().train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("layer", ["layer1", "layer3"])
def test_residual_adds_its_input(model, images, layer):
    """out = X + R(X), with X the first block's output and R the two Conv-BN-ReLU blocks."""
    block = getattr(model, layer)
    # the input of that layer
    with torch.no_grad():
        h = model.prep(images)
        if layer == "layer3":
            h = model.layer2(model.layer1(h))
        x_branch = block[0](h)
        residual = block[1]
        branch = residual[1](residual[0](x_branch.clone()))
        out = block(h)
    assert torch.allclose(out, x_branch + branch, atol=1e-5)
    assert not torch.allclose(out, x_branch, atol=1e-3)  # the branch is not zero by itself


@pytest.mark.parametrize("layer", ["layer1", "layer3"])
def test_zeroed_residual_branch_gives_identity(model, images, layer):
    """Zeroing the second BN of the residual branch makes the branch 0: the layer returns X."""
    zeroed = copy.deepcopy(model).eval()
    block = getattr(zeroed, layer)
    second_bn = block[1][1][1]
    assert isinstance(second_bn, nn.BatchNorm2d)
    with torch.no_grad():
        second_bn.weight.zero_()
        second_bn.bias.zero_()
        h = zeroed.prep(images)
        if layer == "layer3":
            h = zeroed.layer2(zeroed.layer1(h))
        assert torch.allclose(block(h), block[0](h), atol=0)


def test_logit_scale_multiplies_logits_and_adds_no_parameters(images):
    torch.manual_seed(0)
    plain = CustomResNet(logit_scale=1.0).eval()
    scaled = CustomResNet(logit_scale=0.125).eval()
    assert trainable(scaled) == trainable(plain) == N_PARAMS
    assert scaled.state_dict().keys() == plain.state_dict().keys()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, b = plain(images), scaled(images)
    assert torch.allclose(b, 0.125 * a, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a, b)


def test_logit_scale_summary_is_the_same(capsys):
    """The scale is parameter-free: the summary table of a scaled model is the unscaled one's."""
    scaled = summary_text(CustomResNet(logit_scale=0.125), capsys)
    assert scaled == summary_text(CustomResNet(logit_scale=1.0), capsys)
    assert scaled.count("Total params: 6,575,370") == 1


def test_forward_returns_logits_not_log_probabilities(images):
    torch.manual_seed(0)
    model = CustomResNet(logit_scale=1.0).eval()
    with torch.no_grad():
        out = model(images)
        features = torch.flatten(model.pool(model.layer3(model.layer2(model.layer1(model.prep(images))))), 1)
        head = model.fc(features)
    assert torch.allclose(out, head)  # nothing after the Linear layer
    assert not torch.allclose(out, torch.log_softmax(out, dim=1), atol=1e-3)
    assert not torch.allclose(out.exp().sum(1), torch.ones(len(out)), atol=1e-3)
    # Scaling acts on logits: log-probabilities would not scale linearly.
    model.logit_scale = 3.0
    with torch.no_grad():
        tripled = model(images)
    assert torch.allclose(tripled, 3.0 * out, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tripled, torch.log_softmax(tripled, dim=1), atol=1e-3)
