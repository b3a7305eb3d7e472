"""evaluate_superres's ``diffusion_mean_k``: the mean of K cascade samples, scored beside one sample and trilinear.

Stand-in sampler: the ground truth + independent white noise of SD σ per draw (a "sampler" whose predictable
part is perfect and whose invented part is pure noise). With the truth's HF power s² and the noise's n², one
sample's HF correlation is 1/sqrt(1 + n²/s²); the K-mean's noise power is n²/K, so 1/sqrt(1 + n²/(K·s²)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import superres_fixtures as fx
from generatect_kedro.cohort.grids import GridVolume
from generatect_kedro.metrics.frequency import high_frequency_mask, high_frequency_power
from generatect_kedro.pipelines.superres import nodes
from generatect_kedro.pipelines.superres.task import build_cascade

SCALE = fx.FULL // fx.LOW
VALID = ["vol-03", "vol-04"]


class TruthPlusNoise(nn.Module):
    """(D, h, w) condition → its volume's ground truth + σ·N(0, 1) drawn from ``generator``."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], sigma: float):
        super().__init__()
        self.pairs, self.sigma = pairs, sigma

    def forward(self, condition, embeds, *, slice_batch_size, generator):
        truth = next(t for c, t in self.pairs if torch.equal(c, condition))
        return truth + self.sigma * torch.randn(truth.shape, generator=generator)


@pytest.fixture()
def evaluate(monkeypatch, tmp_path):
    low, full = fx.grids()
    # the truth shrunk to [-0.4, 0.4]: truth + noise never reaches the [-1, 1] clip of the HU conversion
    full = {v: GridVolume(g.volume * 0.4, g.affine) for v, g in full.items()}
    truths = {v: torch.from_numpy(full[v].volume) for v in VALID}
    conditions = {v: torch.from_numpy(low[v].volume) for v in VALID}
    hf_fraction = float(high_frequency_mask(fx.FULL, fx.FULL, 0.5 / SCALE).double().mean())
    # noise HF power n² = σ²·(share of HF bins) = the mean truth HF power per slice: n²/s² ≈ 1
    s2 = {v: float(high_frequency_power(truths[v], 0.5 / SCALE).sum()) / fx.DEPTH for v in VALID}
    sigma = math.sqrt(np.mean(list(s2.values())) / hf_fraction)
    stand_in = TruthPlusNoise([(conditions[v], truths[v]) for v in VALID], sigma)
    monkeypatch.setattr(nodes, "build_cascade", lambda config: stand_in)
    logged = {}

    class FakeMlflow:
        @staticmethod
        def log_metrics(metrics):
            logged.update(metrics)

    monkeypatch.setattr(nodes, "active_mlflow", lambda: FakeMlflow)
    embeddings, index = fx.prompts()
    summary = {"cascade": {"stages": [{"scale": SCALE, "sampler": "dpm++2m", "steps": 1, "lowres_noise_level": 0.0,
                                       "cond_scale": 1.0}]},
               "hu_window": [-1000, 1000], "grids": {"fullres": [fx.DEPTH, fx.FULL, fx.FULL]},
               "condition": {"condition": "downsample"}}

    def run(k: int):
        params = fx.params(tmp_path)
        params["evaluation"] = {**params["evaluation"], "posterior_samples": k}
        logged.clear()
        report, _ = nodes.evaluate_superres({}, summary, fx.loaders(low), fx.loaders(full), embeddings, index,
                                            fx.splits(), params)
        return report, dict(logged)

    noise_over_signal = {v: sigma**2 * hf_fraction / s2[v] for v in VALID}
    return run, noise_over_signal


def test_mean_of_k_samples_restores_what_one_sample_hides(evaluate):
    run, ratio = evaluate
    report, logged = run(4)
    methods = report["methods"]
    assert set(methods) == {"diffusion", "trilinear", nodes.POSTERIOR_MEAN}
    one = np.mean([1 / math.sqrt(1 + r) for r in ratio.values()])
    four = np.mean([1 / math.sqrt(1 + r / 4) for r in ratio.values()])
    assert one == pytest.approx(0.7, abs=0.1)  # the construction: invented HF power ≈ the true HF power
    assert methods["diffusion"]["hf_correlation"] == pytest.approx(one, abs=0.03)
    assert methods[nodes.POSTERIOR_MEAN]["hf_correlation"] == pytest.approx(four, abs=0.03)
    assert methods[nodes.POSTERIOR_MEAN]["hf_relative_error"] < methods["diffusion"]["hf_relative_error"]
    assert methods[nodes.POSTERIOR_MEAN]["psnr_hu"] > methods["diffusion"]["psnr_hu"] + 3  # noise power / 4: +6 dB
    assert report["sampling"]["posterior_samples"] == 4
    assert set(report["diffusion_mean_k_minus_trilinear"]) == set(nodes.METRIC_DEFINITIONS)
    assert logged[f"superres/eval/{nodes.POSTERIOR_MEAN}/hf_correlation"] == methods[nodes.POSTERIOR_MEAN][
        "hf_correlation"]
    assert set(report["per_volume"][0]) == {"volume_id", "diffusion", "trilinear", nodes.POSTERIOR_MEAN}
    # the `diffusion` row is the same single sample whatever K
    off, _ = run(0)
    assert off["methods"]["diffusion"] == methods["diffusion"]


@pytest.mark.parametrize("k", [0, 1])
def test_k_below_two_is_off(evaluate, k):
    report, logged = evaluate[0](k)
    assert set(report["methods"]) == {"diffusion", "trilinear"} and report["sampling"]["posterior_samples"] == 0
    assert not any(nodes.POSTERIOR_MEAN in key for key in logged)


def test_posterior_mean_averages_the_draws():
    draws = [torch.full((2, 3), float(v)) for v in (1, 2, 6)]
    torch.testing.assert_close(nodes.posterior_mean(lambda k: draws[k], 3), torch.full((2, 3), 3.0))
    with pytest.raises(ValueError):
        nodes.posterior_mean(lambda k: draws[k], 0)


def test_thresholding_travels_in_the_stage_config(tmp_path):
    """Stage params → registered config → rebuilt cascade; configs registered before the keys sample as released."""
    from generatect_kedro.pipelines.superres.data import StageGeometry
    from generatect_kedro.pipelines.superres.task import stage_config

    geometry = StageGeometry(index=0, input_hw=(8, 8), output_hw=(16, 16), full_hw=(16, 16))
    params = {"unet": fx.UNET, "stages": [{"scale": 2, "sampler": "dpm++2m", "steps": 2,
                                           "dynamic_thresholding": False, "threshold_percentile": 0.99}]}
    config = stage_config(params, geometry, fx.TEXT_DIM).to_config()
    assert config["dynamic_thresholding"] is False and config["threshold_percentile"] == 0.99
    stage = build_cascade({"stages": [config]}).stages[0]
    assert stage.dynamic_thresholding is False and stage.threshold_percentile == 0.99
    legacy = {k: v for k, v in config.items() if k not in ("dynamic_thresholding", "threshold_percentile")}
    stage = build_cascade({"stages": [legacy]}).stages[0]
    assert stage.dynamic_thresholding is True and stage.threshold_percentile == 0.95
    # the checkpoint folder's identity ignores the sampling-only switch
    assert nodes._training_keys(config) == nodes._training_keys({**config, "dynamic_thresholding": True})
    bad = {**params, "stages": [{**params["stages"][0], "threshold_percentile": 1.5}]}
    with pytest.raises(ValueError, match="threshold_percentile"):
        stage_config(bad, geometry, fx.TEXT_DIM)
