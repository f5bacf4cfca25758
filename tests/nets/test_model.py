"""The networks (nets/model.py): the reference's shapes and initialisation, dropout, deskewing, TTA."""

from __future__ import annotations

import math
import numpy as np
import pytest
import torch
from digitrec.core.config import make_config
from digitrec.nets.augment import TTA_VIEWS
from digitrec.nets.predict import predict_probs, tta_probs
from digitrec.nets.model import ByteMaskDropout, Deskew, ReferenceNet, TTA, build_model, count_parameters
from tests.conftest import synthetic_digits


def slanted_bar(slant: float, dx: float = 0.0, dy: float = 0.0) -> torch.Tensor:
    """(1, 1, 28, 28): a 2-pixel-wide bar through (13.5 + dx, 13.5 + dy), leaning `slant` pixels
    right per pixel up, 16 pixels tall."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre_x = 13.5 + dx - slant * (ys - 13.5 - dy)
    bar = ((xs - centre_x).abs() <= 1.0) & ((ys - 13.5 - dy).abs() <= 8)
    return bar.float()[None, None]


def ink_moments(x: torch.Tensor) -> tuple[float, float, float]:
    """Centre of mass (x, y) in pixels and slant cov(x, y) / var(y) of one image (1, 1, H, W)."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = x[0, 0] / x.sum()
    mx, my = (w * xs).sum(), (w * ys).sum()
    return mx.item(), my.item(), ((w * (xs - mx) * (ys - my)).sum() / (w * (ys - my) ** 2).sum()).item()


def test_seed_net_has_887530_parameters_and_keras_shapes():
    model = build_model(make_config())
    assert isinstance(model, ReferenceNet) and count_parameters(model) == 887_530
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (32, (5, 5), (2, 2)), (32, (5, 5), (2, 2)), (64, (3, 3), (1, 1)), (64, (3, 3), (1, 1))]
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.25, 0.25, 0.5]
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_seed_net_matches_the_keras_layer_order():
    """Pooling before the second ReLU of each stage changes neither outputs nor gradients."""
    torch.manual_seed(0)
    model = build_model(make_config()).eval()
    f, c = model.features, model.classifier
    relu, pool = torch.relu, torch.nn.functional.max_pool2d

    def keras_order(x):
        x = pool(relu(f[2](relu(f[0](x)))), 2)
        x = pool(relu(f[8](relu(f[6](x)))), 2)
        return c[4](relu(c[1](x.flatten(1))))

    def logits_and_grads(forward):
        model.zero_grad()
        logits = forward(x)
        logits.square().sum().backward()
        return logits, [p.grad.clone() for p in model.parameters()]

    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(logits_and_grads(model), logits_and_grads(keras_order))


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_byte_mask_dropout_keeps_1_minus_p_scaled_and_masks_the_gradient(p):
    torch.manual_seed(0)
    dropout = ByteMaskDropout(p)
    x = torch.rand(64, 32, 14, 14).add_(0.5).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(1)
    y = dropout(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)  # 400k draws: std 0.0008
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    # each byte of a 32-bit draw is used: the kept fraction holds on every 4th value too
    for offset in range(4):
        assert kept.permute(0, 2, 3, 1).flatten()[offset::4].float().mean().item() == pytest.approx(1 - p, abs=0.01)
    torch.manual_seed(1)
    assert torch.equal(dropout(x), y)  # torch's default generator: manual_seed repeats the mask
    assert torch.equal(dropout.eval()(x), x)


def test_byte_mask_dropout_falls_back_for_rates_bytes_cannot_express():
    torch.manual_seed(0)
    x = torch.ones(10_000)
    y = ByteMaskDropout(0.3)(x)
    torch.manual_seed(0)
    assert torch.equal(y, torch.nn.functional.dropout(x, 0.3))
    assert torch.equal(ByteMaskDropout(1.0)(x), torch.zeros_like(x))


@pytest.mark.parametrize("slant, dx, dy", [(0.4, 0, 0), (-0.3, 3, -2), (0.0, -4, 3)])
def test_deskew_straightens_and_centres_the_ink(slant, dx, dy):
    x = slanted_bar(slant, dx, dy)
    assert ink_moments(x)[2] == pytest.approx(-slant, abs=0.05)  # rows grow downwards
    y = Deskew()(x)
    mx, my, y_slant = ink_moments(y)
    assert (mx, my) == (pytest.approx(13.5, abs=0.15), pytest.approx(13.5, abs=0.15))
    assert abs(y_slant) < 0.03
    assert y.sum().item() == pytest.approx(x.sum().item(), rel=0.02)  # ink is moved, not lost
    upright = Deskew()(slanted_bar(0.0))
    assert (y - upright).abs().mean() < 0.015  # the same bar, up to resampling
    assert (x - upright).abs().mean() > 0.05  # which the slanted or shifted input was not


def test_deskew_keeps_blank_images_blank_and_works_per_image():
    x = torch.cat([torch.zeros(1, 1, 28, 28), slanted_bar(0.4), slanted_bar(-0.2, 2, 1)])
    y = Deskew()(x)
    assert torch.isfinite(y).all() and torch.equal(y[0], torch.zeros(1, 28, 28))
    torch.testing.assert_close(y[1:2], Deskew()(x[1:2]))  # no image's moments leak into another's
    torch.testing.assert_close(y[2:3], Deskew()(x[2:3]))


def test_deskew_is_part_of_the_model_but_not_of_its_weights():
    plain, straight = build_model(make_config("best")), build_model(make_config("best", deskew=True))
    assert plain.state_dict().keys() == straight.state_dict().keys()  # runs from before load as they were
    straight.load_state_dict(plain.state_dict())
    x = slanted_bar(0.5)
    torch.testing.assert_close(straight.eval()(x), plain.eval()(Deskew()(x)))
    message = r"deskew and alternate_deskew need model 'fast' or 'best' \(not the reference network\)$"
    with pytest.raises(ValueError, match=message):
        make_config("seed", deskew=True)


def test_tta_model_predicts_by_its_views_and_trains_on_single_images():
    model = build_model(make_config("fast", tta=True))
    assert isinstance(model, TTA) and "grids" not in model.state_dict()  # views are no weights
    assert model.state_dict().keys() == {"temperature"} | {f"net.{k}" for k in model.net.state_dict()}
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
    images = synthetic_digits(40, seed=3, labels=False).images
    # eval: the probabilities evaluate.tta_probs averages over TTA_VIEWS, in one batched pass
    np.testing.assert_allclose(predict_probs(model, images), tta_probs(model.net, images), atol=1e-6)
    assert len(TTA_VIEWS) == len(model.grids) > 1
    np.testing.assert_array_equal(tta_probs(model, images), predict_probs(model, images))  # no views of views
    assert not np.allclose(predict_probs(model, images), predict_probs(model.net, images), atol=1e-3)
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(model.train()(x), model.net.train()(x))  # training: the net, one view
    with torch.no_grad():
        model.temperature.fill_(2.0)
    logits = model.eval()(x)
    with torch.no_grad():
        model.temperature.fill_(1.0)
    torch.testing.assert_close(logits * 2, model(x))  # the temperature divides the averaged logits


def test_glorot_uniform_weights_and_zero_biases():
    torch.manual_seed(0)
    model = build_model(make_config())
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            receptive = m.weight[0, 0].numel() if m.weight.dim() == 4 else 1
            fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
            limit = math.sqrt(6 / (fan_in + fan_out))
            w = m.weight.detach()
            assert w.abs().max() <= limit
            assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)  # uniform(-a, a) std
            assert torch.count_nonzero(m.bias) == 0
