"""Networks: shapes, ranges, anchors, decode, losses, joint groups (tiny CPU variants)."""

import numpy as np
import pytest
import torch

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.models import build_model, MODEL_NAMES
from hand_pose_ros.core.models.a2j import anchor_grid_px, decode_anchors
from hand_pose_ros.core.models.joint_groups import (
    GroupFusion, JointGrouping, select_per_joint)

torch.set_num_threads(1)

# Small, fast variants of every registered network.
TINY = {
    'a2j': {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64, 'head_channels': 16},
    'crossinfonet': {'width': 0.125, 'input_size': 48, 'fc_dim': 32, 'dropout': 0.0},
    'a2j_grouped': {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64,
                    'head_channels': 16},
    'joint_groups_rgb': {'width': 0.125, 'input_size': 64},
}


def make_inputs(model, batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = model.input_size
    channels = {'depth': 1, 'color': 3}
    inputs = []
    for name in model.input_names:
        x = torch.rand(batch, channels[name], size, size, generator=generator)
        inputs.append(x * 2.0 - 1.0 if name == 'depth' else x)
    return inputs


def make_targets(batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    joints = torch.rand(batch, 21, 3, generator=generator) * 1.4 - 0.7
    return {'joints': joints, 'valid': torch.ones(batch, 21)}


def test_registry_covers_all_names():
    assert set(MODEL_NAMES) == set(TINY)
    with pytest.raises(ValueError, match='unknown model'):
        build_model('posenet')
    with pytest.raises(ValueError, match='bad config'):
        build_model('a2j', depth_channels=3)
    with pytest.raises(ValueError, match='unknown backbone'):
        build_model('a2j', backbone='resnet101', width=0.125, input_size=64)
    with pytest.raises(ValueError, match='multiple of 16'):
        build_model('a2j', backbone='resnet18', width=0.125, input_size=100)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_forward_shapes_ranges_and_config_round_trip(name):
    model = build_model(name, **TINY[name]).eval()
    with torch.no_grad():
        outputs = model(*make_inputs(model, 3))
    assert outputs['joints'].shape == (3, 21, 3)
    assert outputs['confidence'].shape == (3, 21)
    assert torch.isfinite(outputs['joints']).all()
    assert outputs['confidence'].min() >= 0.0 and outputs['confidence'].max() <= 1.0
    rebuilt = build_model(name, **model.config)
    assert rebuilt.config == model.config
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        p.numel() for p in model.parameters())


def test_a2j_anchor_grid_matches_paper():
    anchors = anchor_grid_px(176)
    assert anchors.shape == (1936, 2)
    assert anchors.min().item() == 2 and anchors.max().item() == 174
    assert sorted(set(anchors[:, 0].tolist()))[:5] == [2, 6, 10, 14, 18]  # 4 px grid
    model = build_model('a2j', backbone='resnet18', width=0.125, input_size=176,
                        head_channels=8).eval()
    assert model.num_anchors == 1936
    with torch.no_grad():
        outputs = model(torch.zeros(1, 1, 176, 176))
    assert outputs['anchor_weights'].shape == (1, 1936, 21)
    # Pixel-centre convention: anchor at u_px = 2 -> (2 + 0.5) / 176 * 2 - 1.
    assert model.anchors_norm[0, 0].item() == pytest.approx(2.5 / 176 * 2 - 1)


def test_a2j_decode_picks_weighted_anchor_plus_offset():
    size = 32
    anchors_norm = (anchor_grid_px(size) + 0.5) / size * 2 - 1
    count = anchors_norm.shape[0]
    logits = torch.full((1, count, 2), -1e4)
    logits[0, 5, 0] = 0.0                    # joint 0: all weight on anchor 5
    logits[0, 7, 1] = logits[0, 9, 1] = 0.0  # joint 1: half on anchors 7 and 9
    offsets = torch.zeros(1, count, 2, 2)
    offsets[0, 5, 0] = torch.tensor([0.25, -0.5])  # stride units: +4 px, -8 px
    depths = torch.zeros(1, count, 2)
    depths[0, 5, 0] = 0.3
    depths[0, 7, 1], depths[0, 9, 1] = 0.2, 0.4
    out = decode_anchors(logits, offsets, depths, anchors_norm, size, 48.0)
    expected_u = (anchor_grid_px(size)[5, 0] + 4 + 0.5) / size * 2 - 1
    expected_v = (anchor_grid_px(size)[5, 1] - 8 + 0.5) / size * 2 - 1
    assert out['joints'][0, 0, 0].item() == pytest.approx(expected_u.item(), abs=1e-6)
    assert out['joints'][0, 0, 1].item() == pytest.approx(expected_v.item(), abs=1e-6)
    assert out['joints'][0, 0, 2].item() == pytest.approx(0.3, abs=1e-6)
    assert out['joints'][0, 1, 2].item() == pytest.approx(0.3, abs=1e-6)
    # One anchor: no spread, confidence 1. Two anchors: each half their distance from the
    # joint, in reference pixels (x 176 / 32): exp(-spread / 48).
    assert out['confidence'][0, 0].item() == pytest.approx(1.0, abs=1e-4)
    anchors_px = anchor_grid_px(size)
    spread_ref_px = (anchors_px[7] - anchors_px[9]).norm().item() / 2 * 176 / size
    assert out['confidence'][0, 1].item() == pytest.approx(np.exp(-spread_ref_px / 48.0),
                                                           rel=1e-4)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_loss_decreases_when_overfitting_a_tiny_batch(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name]).train()
    inputs = make_inputs(model, 2)
    targets = make_targets(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for step in range(12):
        if hasattr(model, 'set_step'):
            model.set_step(step)
        losses = model.loss(model(*inputs), targets)
        assert set(losses) > {'total'}
        optimizer.zero_grad()
        losses['total'].backward()
        optimizer.step()
        history.append(losses['total'].item())
    assert np.isfinite(history).all()
    assert history[-1] < 0.6 * history[0], history


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_loss_ignores_unlabelled_joints(name):
    model = build_model(name, **TINY[name]).eval()
    with torch.no_grad():
        outputs = model(*make_inputs(model, 2))
    targets = make_targets(2)
    targets['valid'][:, 10:] = 0.0
    reference = model.loss(outputs, targets)['total']
    targets['joints'][:, 10:] = float('nan')
    assert model.loss(outputs, targets)['total'].item() == pytest.approx(reference.item())
    with pytest.raises(ValueError, match='joints'):
        model.loss(outputs, {'joints': torch.zeros(2, 20, 3)})


def test_a2j_loss_is_three_joint_plus_surrounding_in_reference_units():
    model = build_model('a2j', **TINY['a2j']).eval()
    target = torch.zeros(1, 21, 3)
    outputs = {'joints': target.clone(), 'anchor_uv': torch.zeros(1, 21, 2)}
    # 10 reference px in u (above tau1 = 1) and 1.5 mm in z (below tau2 = 3).
    outputs['joints'][..., 0] = 10.0 / 88.0
    outputs['joints'][..., 2] = 1.5 / model.cube_half_depth_mm
    outputs['anchor_uv'][..., 1] = 0.5 / 88.0
    losses = model.loss(outputs, {'joints': target})
    assert losses['joint'].item() == pytest.approx(0.5 * (10 - 0.5) + 0.5 * 1.5 ** 2 / 3,
                                                   rel=1e-4)
    assert losses['surrounding'].item() == pytest.approx(0.5 * 0.5 ** 2, rel=1e-4)
    assert losses['total'].item() == pytest.approx(
        3 * losses['joint'].item() + losses['surrounding'].item(), rel=1e-6)


def test_crossinfonet_branches_map_to_palm_and_finger_joints():
    model = build_model('crossinfonet', **TINY['crossinfonet']).eval()
    with torch.no_grad():
        for regressor, marker in ((model.palm_regressor, 0.5), (model.finger_regressor, -0.5)):
            last = regressor.fc[-1]
            last.weight.zero_()
            last.bias.fill_(marker)
        joints = model(*make_inputs(model, 1))['joints'][0]
    assert (joints[skeleton.PALM_JOINTS] == 0.5).all()
    assert (joints[skeleton.FINGER_GROUP_JOINTS] == -0.5).all()


def test_joint_grouping_schedule_assignment_and_fusion_init():
    grouping = JointGrouping(21, 3)
    assert grouping.temperature() == 5.0
    grouping.set_step(999)
    assert grouping.temperature() == 5.0
    grouping.set_step(2500)
    assert grouping.temperature() == pytest.approx(4.8)
    grouping.set_step(10 ** 7)
    assert grouping.temperature() == 0.5
    with torch.no_grad():
        grouping.logits[:, 0] += torch.arange(21) % 3 == 0
        grouping.logits[:, 1] += torch.arange(21) % 3 == 1
        grouping.logits[:, 2] += torch.arange(21) % 3 == 2
    grouping.eval()
    selectors = grouping.selectors()
    assert torch.equal(selectors.sum(dim=1), torch.ones(21))
    assert grouping.grouping() == [list(range(k, 21, 3)) for k in range(3)]
    with torch.inference_mode():
        assert grouping.selectors() is selectors  # kept while the logits stay the same
    state = {k: v.clone() for k, v in grouping.state_dict().items()}
    state['logits'] = state['logits'].roll(1, dims=1)  # every joint moves one group on
    grouping.load_state_dict(state)
    assert torch.equal(grouping.selectors(), selectors.roll(1, dims=1))
    grouping.train()
    relaxed = grouping.selectors()
    assert torch.allclose(relaxed.sum(dim=1), torch.ones(21))
    per_group = torch.stack([torch.full((2, 21, 5), float(k)) for k in range(3)])
    picked = select_per_joint(per_group, selectors)
    assert torch.equal(picked[0, :, 0], (torch.arange(21) % 3).float())
    fusion = GroupFusion(4, 3)
    features = [torch.randn(1, 4, 3, 3) for _ in range(3)]
    for fused, original in zip(fusion(features), features):
        assert torch.allclose(fused, original)


def test_grouped_models_expose_grouping_and_rgb_needs_depth():
    model = build_model('a2j_grouped', **TINY['a2j_grouped'])
    groups = model.grouping()
    assert sorted(j for group in groups for j in group) == list(range(21))
    rgb = build_model('joint_groups_rgb', **TINY['joint_groups_rgb'])
    with pytest.raises(ValueError, match='use_depth'):
        rgb(torch.rand(1, 3, 64, 64))
    rgb_only = build_model('joint_groups_rgb', width=0.125, input_size=64, use_depth=False)
    assert rgb_only.input_names == ('color',)
    assert rgb_only.eval()(torch.rand(1, 3, 64, 64))['joints'].shape == (1, 21, 3)


def test_widening_keeps_the_function_and_separates_the_copies():
    from hand_pose_ros.core.models.widen import widen_state_dict
    torch.manual_seed(0)
    narrow = build_model('a2j', backbone='resnet18', width=0.125, input_size=32, head_channels=8)
    for module in narrow.modules():  # non-trivial BatchNorm, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
            torch.nn.init.normal_(module.running_mean, 0.0, 0.2)
            torch.nn.init.uniform_(module.running_var, 0.5, 2.0)
    wide = build_model('a2j', backbone='resnet18', width=0.25, input_size=32, head_channels=16)
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), wide.state_dict(),
                                          generator=torch.Generator().manual_seed(1)))
    narrow.eval()
    wide.eval()
    batch = torch.rand(4, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected, widened = narrow(batch), wide(batch)
    for key in ('joints', 'confidence'):
        torch.testing.assert_close(widened[key], expected[key], atol=1e-5, rtol=1e-4)
    # The two copies of a hidden unit send different weights, so they will learn apart.
    weight = wide.weight_head.body[1][0].weight[:8]
    assert not torch.allclose(weight[:, :8], weight[:, 8:])
    torch.testing.assert_close(weight[:, :8] + weight[:, 8:],
                               narrow.weight_head.body[1][0].weight)


def test_widening_refuses_shapes_that_do_not_grow_by_whole_factors():
    from hand_pose_ros.core.models.widen import widen_state_dict
    narrow = build_model('a2j', backbone='resnet18', width=0.25, input_size=32, head_channels=16)
    odd = build_model('a2j', backbone='resnet18', width=0.25, input_size=32, head_channels=24)
    with pytest.raises(ValueError, match='not by a whole factor'):
        widen_state_dict(narrow.state_dict(), odd.state_dict())
    deeper = build_model('a2j', backbone='resnet34', width=0.25, input_size=32, head_channels=16)
    with pytest.raises(ValueError, match='different tensors'):
        widen_state_dict(narrow.state_dict(), deeper.state_dict())
