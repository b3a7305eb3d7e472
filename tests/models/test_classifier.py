"""The CT-Net-style abnormality classifier: shapes on odd grids, batch independence, config checks, registry."""

from __future__ import annotations

import pytest
import torch

from generatect_kedro.models.classifier import (
    CLASSIFIER_KIND,
    AbnormalityClassifier,
    ClassifierConfig,
    build_classifier,
    classifier_registry_config,
)

SMALL = ClassifierConfig(widths=(4, 8), head_width=8, embed_dim=16, dropout=0.0)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dhw", [(17, 16, 16), (9, 20, 24), (1, 4, 4), (25, 13, 11)])
def test_output_shapes(batch, dhw):
    torch.manual_seed(0)
    model = AbnormalityClassifier(SMALL).eval()
    x = torch.rand(batch, 1, *dhw) * 2 - 1
    assert model(x).shape == (batch, 18)
    assert model.features(x).shape == (batch, SMALL.feature_dim)
    assert model.slice_features(x).shape == (batch * dhw[0], SMALL.slice_feature_dim)


def test_201_slice_grid_and_default_config():
    model = AbnormalityClassifier().eval()  # defaults: 3 stages, 128-d features
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 201, 8, 8))
    assert out.shape == (1, 18) and torch.isfinite(out).all()


def test_slice_features_are_per_slice_and_b_major():
    """Slice j of volume i is row i·D + j, and a slice's features do not depend on its neighbours."""
    torch.manual_seed(0)
    model = AbnormalityClassifier(SMALL).eval()
    x = torch.rand(2, 1, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        all_rows = model.slice_features(x)
        alone = model.slice_features(x[1:2, :, 3:4])
    torch.testing.assert_close(all_rows[1 * 5 + 3], alone[0])


def test_features_do_not_depend_on_batch_companions():
    """GroupNorm, not BatchNorm: the Fréchet metrics batch real and generated sets separately."""
    torch.manual_seed(0)
    model = AbnormalityClassifier(SMALL).train()  # even in train mode (dropout is 0 here)
    x = torch.rand(3, 1, 7, 16, 16) * 2 - 1
    torch.testing.assert_close(model.features(x)[:1], model.features(x[:1]))


def test_features_see_position():
    """The coarse pooling grid keeps where things are: a bright blob top-left differs from bottom-right."""
    torch.manual_seed(0)
    model = AbnormalityClassifier(SMALL).eval()
    a = -torch.ones(1, 1, 4, 16, 16)
    b = a.clone()
    a[..., :4, :4] = 1.0
    b[..., -4:, -4:] = 1.0
    with torch.no_grad():
        assert not torch.allclose(model.features(a), model.features(b), atol=1e-4)


def test_logits_have_gradients_to_every_parameter():
    model = AbnormalityClassifier(SMALL)
    model(torch.rand(2, 1, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 5, 3, 16), (1, 2, 5, 16, 16), (1, 5, 16, 16)])
def test_rejects_bad_input(shape):
    with pytest.raises(ValueError):
        AbnormalityClassifier(SMALL)(torch.zeros(shape))


@pytest.mark.parametrize("params", [{"widths": ()}, {"dropout": 1.0}, {"pool_dhw": (2, 2)}, {"embed_dim": 0}])
def test_config_rejects_invalid(params):
    with pytest.raises(ValueError):
        ClassifierConfig(**params)


def test_from_params_rejects_unknown_keys():
    with pytest.raises(ValueError, match="widht"):
        ClassifierConfig.from_params({"widht": [8]})


def test_registry_builder_round_trip():
    config = classifier_registry_config(SMALL)
    assert config["kind"] == CLASSIFIER_KIND
    rebuilt = build_classifier(config)
    assert isinstance(rebuilt, AbnormalityClassifier) and rebuilt.config == SMALL
    original = AbnormalityClassifier(SMALL)
    rebuilt.load_state_dict(original.state_dict())  # same architecture, same keys and shapes
