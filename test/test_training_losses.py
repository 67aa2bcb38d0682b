"""Every loss against values computed by hand."""

import math

import pytest
import torch

from mtdp_ros.training.losses import (
    balanced_cross_entropy_loss, cross_entropy_loss, depth_loss, edge_loss,
    load_balancing_loss, LossPrioritizer, MultiTaskLoss, normals_loss)

LN2 = math.log(2.0)


def grid(values):
    """1 x C x 1 x N tensor from a C x N nested list."""
    return torch.tensor(values, dtype=torch.float32)[None, :, None, :]


def labels(values):
    return torch.tensor(values)[None, None, None, :]


def test_cross_entropy_ignores_255_and_averages_valid_pixels():
    logits = grid([[0.0, 2.0, 5.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    target = labels([0, 0, 255])
    # pixel 0: uniform over 3 -> ln 3; pixel 1: -log(e^2 / (e^2 + 2)); pixel 2 ignored
    expected = (math.log(3) - math.log(math.exp(2) / (math.exp(2) + 2))) / 2
    assert cross_entropy_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert cross_entropy_loss(logits, labels([255, 255, 255])).item() == 0.0


def test_balanced_cross_entropy_weights_classes_by_frequency():
    logits = grid([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    target = labels([0, 0, 0, 1])          # 3/4 negatives -> w_pos = 0.75, w_neg = 0.25
    expected = (3 * 0.25 * LN2 + 0.75 * LN2) / 4
    assert balanced_cross_entropy_loss(logits, target).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match='binary'):
        balanced_cross_entropy_loss(logits, labels([0, 2, 0, 1]))


def test_depth_l1_masks_invalid_pixels():
    pred = grid([[1.0, 2.0, 3.0]])
    target = grid([[1.5, 0.0, 2.0]])
    assert depth_loss(pred, target).item() == pytest.approx((0.5 + 1.0) / 2)


def test_normals_loss_normalises_predictions_and_skips_zero_targets():
    pred = grid([[0.0, 3.0], [0.0, 0.0], [2.0, 0.0]])        # (0,0,2) and (3,0,0)
    target = grid([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])      # (0,1,0) and invalid
    # |(0,0,1) - (0,1,0)|_1 = 2 over one valid pixel
    assert normals_loss(pred, target).item() == pytest.approx(2.0)


def test_edge_loss_weights_positives_by_edge_w():
    logit = grid([[0.0, 0.0, 0.0, 3.0]])
    target = grid([[1.0, 0.0, 255.0, 1.0]])
    w = 0.9
    expected = (w * LN2 + (1 - w) * LN2 + w * math.log1p(math.exp(-3.0))) / 3
    assert edge_loss(logit, target, w).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match='edge_w'):
        edge_loss(logit, target, 1.0)


def test_load_balancing_is_the_squared_coefficient_of_variation_summed_over_sites():
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    skewed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])         # mean (1, 0): std sqrt(.5), mean .5
    assert load_balancing_loss([balanced]).item() == pytest.approx(0.0)
    assert load_balancing_loss([skewed]).item() == pytest.approx(2.0)
    assert load_balancing_loss([skewed, balanced, skewed]).item() == pytest.approx(4.0)


def _outputs():
    pred = {'depth': grid([[1.0, 2.0]]), 'edge': grid([[0.0, 0.0]])}
    aux = {'depth': grid([[2.0, 2.0]]), 'edge': grid([[0.0, 0.0]])}
    targets = {'depth': grid([[2.0, 2.0]]), 'edge': grid([[1.0, 0.0]])}
    routes = [torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    return {'pred': pred, 'aux': aux, 'routes': routes}, targets


def test_fixed_weighting_adds_aux_heads_and_load_balancing():
    outputs, targets = _outputs()
    loss = MultiTaskLoss(('depth', 'edge'), {'depth': 2.0, 'edge': 10.0}, edge_w=0.8,
                         load_balancing=0.1, aux_weight=0.25)
    result = loss(outputs, targets)
    depth, edge = 0.5, (0.8 * LN2 + 0.2 * LN2) / 2
    aux = 2.0 * 0.0 + 10.0 * edge
    expected = 2.0 * depth + 10.0 * edge + 0.25 * aux + 0.1 * 2.0
    assert result['depth'].item() == pytest.approx(depth)
    assert result['edge'].item() == pytest.approx(edge)
    assert result['aux'].item() == pytest.approx(aux)
    assert result['load_balancing'].item() == pytest.approx(2.0)
    assert result['total'].item() == pytest.approx(expected, rel=1e-6)


def test_total_is_differentiable():
    outputs, targets = _outputs()
    outputs['pred']['depth'].requires_grad_(True)
    MultiTaskLoss(('depth', 'edge'))(outputs, targets)['total'].backward()
    assert outputs['pred']['depth'].grad is not None


def test_lps_projects_losses_on_a_log_scale():
    outputs, targets = _outputs()
    loss = MultiTaskLoss(('depth', 'edge'), {'depth': 1.0, 'edge': 1.0}, edge_w=0.8,
                         balancing='lps', lps={'history': 1, 'period': 1, 'alpha': 0.0})
    result = loss(outputs, targets)
    edge = (0.8 * LN2 + 0.2 * LN2) / 2
    expected = math.log(1 + 0.5 + 1e-6) + math.log(1 + edge + 1e-6)
    assert result['total'].item() == pytest.approx(expected, rel=1e-6)


def test_lps_prioritises_the_task_whose_loss_falls_slower():
    records = [{'a': 1.0, 'b': 1.0}, {'a': 0.5, 'b': 1.0}]
    # overall ratio 1.5 / 2 = 0.75; a: 0.5 / 0.75, b: 1.0 / 0.75
    plain = LossPrioritizer.compute_weights(records, history=1, alpha=0.0)
    assert plain['a'] == pytest.approx(2 / 3) and plain['b'] == pytest.approx(4 / 3)
    # Spread control: deviations from the mean (1) times 1 + alpha = 2 -> 1/3 and 5/3.
    spread = LossPrioritizer.compute_weights(records, history=1, alpha=1.0)
    assert spread['a'] == pytest.approx(1 / 3) and spread['b'] == pytest.approx(5 / 3)
    # alpha 2.5 would push a below zero: floored at 0.05, then rescaled to mean 1.
    floored = LossPrioritizer.compute_weights(records, history=1, alpha=2.5)
    b = 1 + 3.5 / 3
    assert floored['a'] == pytest.approx(0.05 * 2 / (0.05 + b))
    assert floored['b'] == pytest.approx(b * 2 / (0.05 + b))
    assert LossPrioritizer.compute_weights(records[:1], history=1, alpha=1.0) == \
        {'a': 1.0, 'b': 1.0}


def test_lps_updates_once_per_period_from_the_history():
    prioritizer = LossPrioritizer(('a', 'b'), history=1, period=2, alpha=0.0)
    for value in ({'a': 1.0, 'b': 1.0}, {'a': 1.0, 'b': 1.0}, {'a': 0.5, 'b': 1.0}):
        prioritizer.observe(value)
    assert prioritizer.weights == {'a': 1.0, 'b': 1.0}       # second period not complete
    prioritizer.observe({'a': 0.5, 'b': 1.0})
    assert prioritizer.weights['a'] == pytest.approx(2 / 3)
    state = prioritizer.state_dict()
    restored = LossPrioritizer(('a', 'b'), history=1, period=2, alpha=0.0)
    restored.load_state_dict(state)
    assert restored.weights == prioritizer.weights


def test_configuration_mistakes_are_reported():
    with pytest.raises(ValueError, match='lacks'):
        MultiTaskLoss(('depth',), {'semseg': 1.0})
    with pytest.raises(ValueError, match='no loss'):
        MultiTaskLoss(('depth', 'flow'))
    with pytest.raises(ValueError, match='balancing'):
        MultiTaskLoss(('depth',), balancing='uncertainty')


def test_normals_loss_masks_the_authors_ignore_value_too():
    pred = grid([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    target = grid([[0.0, 0.0, 255.0], [1.0, 0.0, 255.0], [0.0, 0.0, 255.0]])
    # pixel 0 valid (error 2), pixel 1 zero vector, pixel 2 the authors' 255 mark
    assert normals_loss(pred, target).item() == pytest.approx(2.0)
