"""`capacity.flops`: analytic counts of the layers these models are made of, attention counted on every device,
and the meta-device count of real models equal to the count on real CPU tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_capacity_measure import ctvit_loss, maskgit_loss, tiny_ctvit, tiny_maskgit, tiny_unet, unet_loss
from torch import nn

from generatect_kedro.capacity.flops import count_flops, count_training_flops

DEVICES = ["cpu", "meta"]


@pytest.mark.parametrize("device", DEVICES)
def test_linear_is_two_flops_per_multiply_add(device):
    batch, width_in, width_out = 8, 64, 32
    layer = nn.Linear(width_in, width_out, device=device)
    x = torch.randn(batch, width_in, device=device)
    assert count_flops(lambda: layer(x)) == 2 * batch * width_in * width_out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("groups", [1, 4], ids=["dense", "grouped"])
def test_conv3d_forward_and_backward(device, groups):
    """Each of the input and the weight gradient costs the forward's multiply-adds, grouped or not (torch's own
    formula counts a grouped convolution's weight gradient ``groups`` times over)."""
    batch, channels, kernel, side = 2, 8, 3, 6
    conv = nn.Conv3d(channels, channels, kernel, padding=1, groups=groups, device=device)
    x = torch.randn(batch, channels, side, side, side, device=device, requires_grad=True)
    forward = 2 * batch * side**3 * channels * (channels // groups) * kernel**3
    assert count_flops(lambda: conv(x)) == forward
    assert count_training_flops(lambda: conv(x).sum(), modules=[conv]) == 3 * forward
    assert conv.weight.grad is None  # cleared after counting


@pytest.mark.parametrize("device", DEVICES)
def test_attention_is_counted_on_every_device(device):
    """4·B·H·N·M·d forward (QKᵀ and PV), backward twice that: the CPU's fused kernel, which FlopCounterMode does
    not know, and the meta device's math path give the same counts."""
    b, h, n, m, d = 2, 4, 48, 20, 16  # cross-attention: N queries, M keys
    q = torch.randn(b, h, n, d, device=device, requires_grad=True)
    k, v = (torch.randn(b, h, m, d, device=device, requires_grad=True) for _ in range(2))
    mask = torch.ones(b, 1, n, m, dtype=torch.bool, device=device)
    forward = 4 * b * h * n * m * d
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == forward
    assert count_training_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum()) == 3 * forward


def test_backward_of_a_linear_stack_is_twice_the_forward():
    """Every layer's weight gradient costs its forward; every layer but the first (its input needs no gradient)
    also computes an input gradient of the same cost."""
    widths = [32, 128, 256, 64]
    batch = 16
    layers = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths, widths[1:])))
    x = torch.randn(batch, widths[0])
    per_layer = [2 * batch * a * b for a, b in zip(widths, widths[1:])]
    forward = count_flops(lambda: layers(x))
    assert forward == sum(per_layer)
    training = count_training_flops(lambda: layers(x).square().mean(), modules=[layers])
    assert training - forward == 2 * forward - per_layer[0]
    assert (training - forward) / forward == pytest.approx(2, rel=0.1)


@pytest.mark.parametrize(("build", "loss"), [(tiny_ctvit, ctvit_loss), (tiny_maskgit, maskgit_loss),
                                             (tiny_unet, unet_loss)], ids=["ctvit", "maskgit", "unet"])
def test_meta_count_equals_real_cpu_count(build, loss):
    """The project's models: meta (shapes only, as check-config counts) and real CPU tensors (as a benchmark
    counts its warm-up step) agree exactly, forward and forward + backward."""
    torch.manual_seed(0)
    real, meta = build("cpu"), build("meta")
    forward = count_flops(lambda: loss(real, "cpu"))
    assert forward > 0
    assert count_flops(lambda: loss(meta, "meta")) == forward
    training = count_training_flops(lambda: loss(real, "cpu"), modules=[real])
    assert count_training_flops(lambda: loss(meta, "meta"), modules=[meta]) == training
    assert 2.5 * forward < training < 3.5 * forward


def test_bf16_autocast_does_not_change_the_count():
    layers = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 16)).to("meta")
    x = torch.empty(4, 64, device="meta")
    assert count_flops(lambda: layers(x), dtype=torch.bfloat16) == count_flops(lambda: layers(x))
