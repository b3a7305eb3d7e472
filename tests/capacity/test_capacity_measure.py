"""The meta-device measurements against real tensors: saved-for-backward bytes of tiny models on the CPU, the
bf16 autocast emulation against CPU autocast, the fused-attention accounting and the live-bytes peak."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from generatect_kedro.capacity.measure import GpuEmulation, measure_inference, measure_training, storage_key
from generatect_kedro.diffusion.loss import draw_loss_randomness, superres_v_loss
from generatect_kedro.models.ctvit import CTViT, CTViTConfig
from generatect_kedro.models.maskgit import MaskGIT, MaskGITConfig
from generatect_kedro.models.unet import UNet, UNetConfig

META = torch.device("meta")


def real_saved_bytes(loss_fn, modules) -> int:
    """What autograd saves for backward on real CPU tensors, each storage once, weights excluded."""
    weights = {storage_key(t) for m in modules for t in (*m.parameters(), *m.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor):
        if storage_key(tensor) not in weights:
            saved.setdefault(storage_key(tensor), tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn()
    return sum(saved.values())


def tiny_ctvit(device):
    with torch.device(device):
        model = CTViT(CTViTConfig(dim=64, codebook_size=512, image_size=32, patch_size=8, spatial_depth=2,
                                  temporal_depth=2, dim_head=16, heads=4)).train()
    if device == "meta":
        model.vq.ema_update = lambda tokens, ids: None  # as capacity.meta_models does (no meta bincount)
    return model


def ctvit_loss(model, device):
    out = model(torch.randn(2, 1, 17, 32, 32, device=device))
    return out.recon_loss + out.commit_loss


def tiny_maskgit(device):
    with torch.device(device):
        return MaskGIT(MaskGITConfig(num_tokens=512, dim=128, dim_context=384, depth=2, heads=4, dim_head=32,
                                     max_seq_len=144)).train()


def maskgit_loss(model, device):
    ids = torch.zeros(4, 144, dtype=torch.long, device=device)
    text, mask = torch.randn(4, 20, 384, device=device), torch.ones(4, 20, dtype=torch.bool, device=device)
    logits = model(ids, text, mask, grid_shape=(9, 4, 4))
    return F.cross_entropy(logits.reshape(4 * 144, -1), ids.reshape(-1))


def tiny_unet(device):
    with torch.device(device):
        return UNet(UNetConfig(dim=16, num_resnet_blocks=1, cond_dim=64, attn_heads=2, attn_dim_head=16,
                               mid_attn_heads=2, mid_attn_dim_head=16, max_text_len=64, attn_pool_num_latents=8,
                               attn_pool_max_seq_len=64, attn_pool_depth=1, text_embed_dim=384)).train()


def unet_loss(model, device):
    target, lowres = torch.rand(4, 1, 32, 32, device=device), torch.rand(4, 1, 16, 16, device=device)
    text, mask = torch.randn(4, 20, 384, device=device), torch.ones(4, 20, dtype=torch.bool, device=device)
    draws = draw_loss_randomness(target, cond_drop_prob=0.1)
    return superres_v_loss(model, target, lowres, text, mask, draws=draws).loss


@pytest.mark.parametrize(("build", "loss"), [(tiny_ctvit, ctvit_loss), (tiny_maskgit, maskgit_loss),
                                             (tiny_unet, unet_loss)], ids=["ctvit", "maskgit", "unet"])
def test_meta_activation_estimate_matches_real_saved_bytes(build, loss):
    """fp32 on meta vs a real CPU forward: the same code saves (nearly) the same bytes (measured: ±5 %; the CPU's
    SDPA kernel choice differs a little from the fused-kernel accounting)."""
    torch.manual_seed(0)
    real_model, meta_model = build("cpu"), build("meta")
    real = real_saved_bytes(lambda: loss(real_model, "cpu"), [real_model])
    measured = measure_training(lambda: loss(meta_model, "meta"), [meta_model], dtype=None)
    assert measured.saved_bytes == pytest.approx(real, rel=0.10)
    assert measured.total_bytes > measured.saved_bytes  # plus the backward workspace


def test_bf16_emulation_matches_cpu_autocast_on_an_mlp():
    """Linear layers are in both CUDA's and the CPU's lower-precision lists: the emulation saves what autocast does."""
    torch.manual_seed(0)

    def mlp(device):
        with torch.device(device):
            return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 32))

    real_model, meta_model = mlp("cpu"), mlp("meta")

    def real_loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return real_model(torch.randn(16, 64)).float().square().mean()

    real = real_saved_bytes(real_loss, [real_model])
    emulated = measure_training(lambda: meta_model(torch.empty(16, 64, device=META)).float().square().mean(),
                                [meta_model], dtype=torch.bfloat16)
    fp32 = measure_training(lambda: meta_model(torch.empty(16, 64, device=META)).float().square().mean(),
                            [meta_model], dtype=None)
    assert emulated.saved_bytes == real
    assert emulated.saved_bytes < fp32.saved_bytes


def test_fused_attention_saves_no_attention_matrix():
    """q, k, v, the output and the fp32 log-sum-exp: O(n), not the (n, n) probabilities of the math path."""
    b, h, n, d = 2, 4, 256, 32
    q, k, v = (torch.empty(b, h, n, d, device=META, requires_grad=True) for _ in range(3))
    fused = measure_training(lambda: F.scaled_dot_product_attention(q, k, v).sum(), [], dtype=None)
    assert fused.saved_bytes == 4 * (4 * b * h * n * d) + 4 * b * h * n
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):  # forced math: the matrix is real
        math = measure_training(lambda: F.scaled_dot_product_attention(q, k, v).sum(), [], dtype=None)
    assert math.saved_bytes >= 3 * 4 * b * h * n * d + 4 * b * h * n * n > fused.saved_bytes


def test_autocast_queries_answer_for_meta_only_inside_the_emulation():
    with GpuEmulation(torch.bfloat16):
        assert torch.is_autocast_enabled("meta") and torch.get_autocast_dtype("meta") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu") is False
    with pytest.raises(RuntimeError):
        torch.is_autocast_enabled("meta")


def test_inference_peak_counts_tensors_alive_together():
    def run():
        a = torch.empty(1000, device=META)  # 4000 B
        b = a * 2  # 8000 B alive
        del a
        c = b + 1  # b and c: 8000 B
        d = c.view(10, 100)  # a view allocates nothing
        return d

    assert measure_inference(run, [], dtype=None).peak_bytes == 8000
