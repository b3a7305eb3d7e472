"""CT-ViT equals the released module on the reference fixture (README §1): every eval tensor, training step, grads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file

from generatect_kedro.models.convert import convert_ctvit_state_dict
from generatect_kedro.models.ctvit import CTViT, CTViTConfig

pytestmark = pytest.mark.fixtures

ATOL, RTOL = 1e-5, 1e-4

HOOKED = {
    "eval.patch_emb_first_frame": "to_patch_emb_first_frame",
    "eval.patch_emb_rest": "to_patch_emb",
    "eval.spatial_rel_pos_bias": "spatial_rel_pos_bias",
    "eval.enc_spatial_out": "enc_spatial_transformer",
    "eval.enc_temporal_out": "enc_temporal_transformer",
    "eval.dec_temporal_out": "dec_temporal_transformer",
    "eval.dec_spatial_out": "dec_spatial_transformer",
}
EXACT = {"eval.codebook_ids", "eval.vq_indices_flat"}


def build_model(fixtures_dir: Path) -> tuple[CTViT, dict[str, torch.Tensor]]:
    meta = json.loads((fixtures_dir / "ctvit.json").read_text())
    config = CTViTConfig.from_reference_kwargs(meta["constructor_kwargs"])
    model = CTViT(config)
    model.load_state_dict(convert_ctvit_state_dict(load_file(fixtures_dir / "ctvit_weights.safetensors"), config))
    return model, load_file(fixtures_dir / "ctvit_io.safetensors")


@pytest.fixture(scope="module")
def eval_outputs(fixtures_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model, io = build_model(fixtures_dir)
    model.eval()
    video = io["input.video"]
    got: dict[str, torch.Tensor] = {}
    handles = [
        getattr(model, name).register_forward_hook(lambda _m, _i, out, key=key: got.setdefault(key, out))
        for key, name in HOOKED.items()
    ]
    with torch.no_grad():
        out = model(video)
        for h in handles:
            h.remove()
        got["eval.recon_forward"] = out.recon
        got["eval.pre_vq_tokens"] = rearrange(out.pre_quant, "b t h w d -> b (t h w) d")
        got["eval.vq_quantized"] = rearrange(out.quantized, "b t h w d -> b (t h w) d")
        got["eval.vq_indices_flat"] = rearrange(out.ids, "b t h w -> b (t h w)")
        got["eval.codebook_ids"] = model.tokenize(video)
        ids = io["eval.codebook_ids"]
        got["eval.decoded_from_ids"] = model.decode_from_ids(ids)
        got["eval.decoded_from_flat_ids"] = model.decode_from_ids(ids.reshape(ids.shape[0], -1))
        patches = torch.cat((model.to_patch_emb_first_frame(video[:, :, :1]), model.to_patch_emb(video[:, :, 1:])), 1)
        got["eval.encode_out"] = model.encode_tokens(patches)
        got["encode(volume)"] = model.encode(video)
    return got, io


def test_every_eval_tensor_is_covered(eval_outputs):
    got, io = eval_outputs
    assert {k for k in io if k.startswith("eval.")} <= set(got)


@pytest.mark.parametrize(
    "name",
    [*HOOKED, "eval.recon_forward", "eval.pre_vq_tokens", "eval.vq_quantized", "eval.vq_indices_flat",
     "eval.codebook_ids", "eval.decoded_from_ids", "eval.decoded_from_flat_ids", "eval.encode_out"],
)
def test_eval_tensor_matches_release(eval_outputs, name):
    got, io = eval_outputs
    expected = io[name]
    actual = got[name].reshape(expected.shape)
    if name in EXACT:
        assert actual.dtype == torch.int64
        assert torch.equal(actual, expected)
    else:
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def test_encode_volume_equals_encode_of_patches(eval_outputs):
    got, io = eval_outputs
    torch.testing.assert_close(got["encode(volume)"], io["eval.encode_out"], atol=ATOL, rtol=RTOL)


def test_decode_from_ids_equals_forward_recon(eval_outputs):
    got, _ = eval_outputs
    torch.testing.assert_close(got["eval.decoded_from_ids"], got["eval.recon_forward"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["eval.decoded_from_flat_ids"], got["eval.recon_forward"], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def train_step(fixtures_dir: Path):
    model, io = build_model(fixtures_dir)
    model.train()
    out = model(io["input.video"])
    out.recon_loss.backward()
    return model, out, io


def test_training_losses_recon_and_ids(train_step):
    _, out, io = train_step
    torch.testing.assert_close(out.recon_loss.reshape(1), io["train.loss"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.commit_loss.reshape(1), io["train.vq_commit_loss"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out.recon, io["train.recon"], atol=ATOL, rtol=RTOL)
    assert torch.equal(rearrange(out.ids, "b t h w -> b (t h w)"), io["train.vq_indices_flat"])


def test_codebook_buffers_after_one_ema_update(train_step):
    model, _, io = train_step
    torch.testing.assert_close(model.vq.embed, io["train.codebook_embed_after"][0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(model.vq.cluster_size, io["train.codebook_cluster_size_after"][0], atol=ATOL, rtol=RTOL)


def test_gradients_match_release(train_step):
    model, _, io = train_step
    expected = {k[len("train.grad."):]: v for k, v in io.items() if k.startswith("train.grad.") and v.numel()}
    ours = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == set(expected), "parameters receiving a gradient differ from the release's"
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")
