"""
Learnable joint groups (Gumbel-softmax joint selectors) for hand pose networks.

Following the learnable-joint-groups method of the shared reference: shared features feed
K groups chosen by binary selectors sampled from a Concrete / Gumbel-softmax distribution
over learnable logits theta (N joints x K), initialised to 1/K. Every joint belongs to exactly
one group; each group has its own branch; a 1x1 convolution per group fuses the
concatenated group features, initialised to pass the group's own features through.

Temperature schedule (reference): starts at 5 and drops by 0.1 every 1000 training steps,
floored at 0.5 here so the relaxation never degenerates. Call :meth:`set_step` from the
training loop. In eval mode (and therefore in every export) the selectors are the one-hot
argmax of theta: groups are fixed to the most likely assignment, and :meth:`grouping`
returns that assignment for the model card.

Two networks use it:

- :class:`JointGroupsRGB` ('joint_groups_rgb'): hourglass trunk on a colour crop, one
  branch per group decoding 2D heat-maps and relative depth maps; joints come from an
  in-graph soft-argmax (integral regression) over the heat-maps, depth from the
  heat-map-weighted depth map. Inputs: ``color`` (B, 3, S, S) float32 RGB in [0, 1] and,
  when built with ``use_depth=True`` (default), ``depth`` (B, 1, S, S) normalised exactly
  like the depth models' input, which anchors the metric depth scale; the output z is in
  the same normalised crop units as the depth models. The crop centre depth itself comes
  from the depth image (or, without depth, from the caller's scale prior).
  Confidence: heat-map probability mass within 2 cells of the decoded position.
- :class:`A2JGrouped` ('a2j_grouped'): the A2J depth backbone with a grouped head: each
  group predicts A2J anchor weights, offsets and depths for all joints; each joint takes the
  predictions of its group, then the standard A2J decode and losses apply.
"""

import torch
from torch import nn
import torch.nn.functional as F

from hand_pose_ros.core.models.a2j import A2J, ANCHORS_PER_CELL, check_input_size, per_anchor
from hand_pose_ros.core.models.losses import check_targets, masked_mean, normalised_from_cells
from hand_pose_ros.core.models.resnet import BasicBlock, conv_bn_relu, scaled_channels

TAU_START = 5.0
TAU_DECAY = 0.1
TAU_DECAY_STEPS = 1000
TAU_MIN = 0.5
CONFIDENCE_RADIUS_CELLS = 2.0


class JointGrouping(nn.Module):
    """
    Learnable assignment of N joints to K groups via Gumbel-softmax selectors.

    :param num_joints: N.
    :param num_groups: K (3 in the reference).
    """

    def __init__(self, num_joints, num_groups=3):
        super().__init__()
        if num_groups < 1 or num_groups > num_joints:
            raise ValueError(f'num_groups must be in [1, {num_joints}], got {num_groups}')
        self.num_joints = num_joints
        self.num_groups = num_groups
        self.logits = nn.Parameter(torch.full((num_joints, num_groups), 1.0 / num_groups))
        # Stored in the state dict so a resumed run continues the schedule.
        self.register_buffer('step', torch.zeros((), dtype=torch.int64))
        self._fixed = None  # (logits version, device, dtype) and the eval selectors

    def set_step(self, step):
        """Set the training step that drives the temperature schedule."""
        if step < 0:
            raise ValueError(f'step must be non-negative, got {step}')
        self.step.fill_(int(step))

    def temperature(self):
        """Return the Gumbel-softmax temperature at the current step."""
        decayed = TAU_START - TAU_DECAY * (int(self.step) // TAU_DECAY_STEPS)
        return max(TAU_MIN, decayed)

    def selectors(self):
        """Return (N, K) selectors: relaxed samples in training, one-hot argmax in eval."""
        if self.training:
            return F.gumbel_softmax(self.logits, tau=self.temperature(), hard=False, dim=-1)
        # Built from Python values so an exported graph holds the fixed assignment as a
        # constant (no ArgMax / OneHot on the logits), and kept until the logits change, so
        # a call needs no host round trip (CUDA graphs capture no host-to-device copy).
        key = (self.logits._version, self.logits.device, self.logits.dtype)
        if self._fixed is None or self._fixed[0] != key:
            assignment = self.logits.detach().argmax(dim=-1).tolist()
            one_hot = [[1.0 if group == k else 0.0 for k in range(self.num_groups)]
                       for group in assignment]
            with torch.inference_mode(False):
                self._fixed = (key, torch.tensor(one_hot, dtype=self.logits.dtype,
                                                 device=self.logits.device))
        return self._fixed[1]

    def grouping(self):
        """Return the most likely assignment: a list of K lists of joint indices."""
        assignment = self.logits.detach().argmax(dim=-1).tolist()
        return [[j for j, g in enumerate(assignment) if g == k] for k in range(self.num_groups)]


class GroupFusion(nn.Module):
    """
    One 1x1 conv per group over the concatenated group features.

    Initialised to the identity on the group's own features and zero on the others, so
    training starts from independent branches and learns what to share.
    """

    def __init__(self, channels, num_groups):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels * num_groups, channels, 1) for _ in range(num_groups))
        with torch.no_grad():
            for k, conv in enumerate(self.convs):
                conv.weight.zero_()
                conv.bias.zero_()
                for c in range(channels):
                    conv.weight[c, k * channels + c, 0, 0] = 1.0

    def forward(self, features):
        """Fuse a list of K (B, C, H, W) maps into K fused maps."""
        stacked = torch.cat(features, dim=1)
        return [conv(stacked) for conv in self.convs]


def select_per_joint(per_group, selectors):
    """
    Combine K per-group predictions per joint.

    :param per_group: (K, B, N, *rest) predictions of every group for every joint.
    :param selectors: (N, K) selector weights (one-hot in eval mode).
    :return: (B, N, *rest): per joint, the selector-weighted sum over groups.
    """
    weights = selectors.t().reshape(selectors.shape[1], 1, selectors.shape[0],
                                    *([1] * (per_group.dim() - 3)))
    return (per_group * weights).sum(dim=0)


class Hourglass(nn.Module):
    """Recursive hourglass (Newell et al., 2016) with residual blocks."""

    def __init__(self, channels, order):
        super().__init__()
        self.skip = BasicBlock(channels, channels)
        self.down = nn.Sequential(nn.MaxPool2d(2), BasicBlock(channels, channels))
        self.inner = Hourglass(channels, order - 1) if order > 1 else BasicBlock(
            channels, channels)
        self.up = BasicBlock(channels, channels)

    def forward(self, x):
        low = self.up(self.inner(self.down(x)))
        return self.skip(x) + F.interpolate(low, scale_factor=2.0, mode='nearest')


class JointGroupsRGB(nn.Module):
    """
    RGB hand pose network with learnable joint groups; see the module docstring.

    :param input_size: crop side in pixels, a multiple of 16 (256 in the reference).
    :param width: channel multiplier (1.0: 128-channel trunk).
    :param num_joints: N.
    :param num_groups: K.
    :param use_depth: also take the normalised depth crop as a fourth input channel.
    :param hourglass_order: hourglass depth (down-samplings inside the hourglass); the
        quarter-resolution features must be divisible by 2**order.
    :param backbone: accepted for a uniform registry config; must be 'hourglass'.
    """

    def __init__(self, input_size=256, width=1.0, num_joints=21, num_groups=3, use_depth=True,
                 hourglass_order=2, backbone='hourglass'):
        super().__init__()
        self.input_size = check_input_size(input_size)
        if backbone != 'hourglass':
            raise ValueError('joint_groups_rgb uses an hourglass trunk; backbone must be '
                             f'hourglass, got {backbone!r}')
        self.heatmap_size = self.input_size // 4
        if self.heatmap_size % (2 ** hourglass_order):
            raise ValueError(f'input_size {input_size} / 4 must be divisible by '
                             f'2**hourglass_order = {2 ** hourglass_order}')
        self.num_joints = num_joints
        self.use_depth = bool(use_depth)
        self.input_names = ('color', 'depth') if self.use_depth else ('color',)
        self.config = {'input_size': self.input_size, 'width': float(width),
                       'num_joints': num_joints, 'num_groups': num_groups,
                       'use_depth': self.use_depth, 'hourglass_order': hourglass_order,
                       'backbone': backbone}
        channels = scaled_channels(128, width)
        stem = scaled_channels(64, width)
        self.trunk = nn.Sequential(
            nn.Conv2d(4 if self.use_depth else 3, stem, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            BasicBlock(stem, channels),
            nn.MaxPool2d(2),
            BasicBlock(channels, channels),
            Hourglass(channels, hourglass_order))
        self.grouping_module = JointGrouping(num_joints, num_groups)
        self.branches = nn.ModuleList(
            nn.Sequential(BasicBlock(channels, channels), BasicBlock(channels, channels))
            for _ in range(num_groups))
        self.fusion = GroupFusion(channels, num_groups)
        self.outputs = nn.ModuleList(
            nn.Conv2d(channels, 2 * num_joints, 1) for _ in range(num_groups))
        grid = normalised_from_cells(torch.arange(self.heatmap_size, dtype=torch.float32),
                                     self.heatmap_size)
        self.register_buffer('grid', grid, persistent=False)

    def set_step(self, step):
        """Set the training step for the temperature schedule."""
        self.grouping_module.set_step(step)

    def grouping(self):
        """Return the most likely joint-to-group assignment (K lists of joint indices)."""
        return self.grouping_module.grouping()

    def forward(self, color, depth=None):
        """Estimate joints from colour crops (and depth crops when built with use_depth)."""
        if self.use_depth:
            if depth is None:
                raise ValueError('this joint_groups_rgb model was built with use_depth=True '
                                 'and needs the (B, 1, S, S) depth crop')
            x = torch.cat([color * 2.0 - 1.0, depth], dim=1)
        else:
            x = color * 2.0 - 1.0
        features = self.trunk(x)
        groups = self.fusion([branch(features) for branch in self.branches])
        maps = torch.stack([out(g) for out, g in zip(self.outputs, groups)], dim=0)
        size = self.heatmap_size
        maps = maps.reshape(maps.shape[0], maps.shape[1], 2, self.num_joints, size * size)
        per_joint = select_per_joint(maps.transpose(2, 3).flatten(3), self.grouping_module
                                     .selectors())
        per_joint = per_joint.reshape(per_joint.shape[0], self.num_joints, 2, size * size)
        return decode_heatmaps(per_joint[:, :, 0], per_joint[:, :, 1], self.grid)

    def loss(self, outputs, targets):
        """Return {'total', 'uv', 'z'}: L1 of the integral joints over labelled joints."""
        joints, valid = check_targets(targets, self.num_joints)
        error = (outputs['joints'] - joints).abs()
        uv = masked_mean(error[..., :2].sum(dim=-1), valid)
        z = masked_mean(error[..., 2], valid)
        return {'total': uv + z, 'uv': uv, 'z': z}


def decode_heatmaps(heatmap_logits, depth_maps, grid):
    """
    Soft-argmax decode of (B, N, H*W) heat-map logits and depth maps.

    :param grid: (H,) normalised coordinates of the heat-map cells (square map).
    :return: dict with 'joints' (B, N, 3), 'confidence' (B, N), 'heatmaps' (B, N, H, W)
        probabilities.
    """
    size = grid.shape[0]
    probs = torch.softmax(heatmap_logits, dim=-1)
    grid_u = grid.repeat(size)
    grid_v = grid.repeat_interleave(size)
    u = (probs * grid_u).sum(dim=-1)
    v = (probs * grid_v).sum(dim=-1)
    z = (probs * depth_maps).sum(dim=-1)
    radius = CONFIDENCE_RADIUS_CELLS * 2.0 / size
    near = ((grid_u - u[..., None]) ** 2 + (grid_v - v[..., None]) ** 2) <= radius ** 2
    confidence = (probs * near.to(probs.dtype)).sum(dim=-1).clamp(0.0, 1.0)
    return {'joints': torch.stack([u, v, z], dim=-1), 'confidence': confidence,
            'heatmaps': probs.reshape(probs.shape[0], probs.shape[1], size, size)}


class A2JGrouped(A2J):
    """
    A2J backbone with a joint-groups head; see the module docstring.

    Extra parameter over :class:`~hand_pose_ros.core.models.a2j.A2J`:
    :param num_groups: K.
    """

    def __init__(self, backbone='resnet50', width=1.0, input_size=176, num_joints=21,
                 head_channels=256, cube_half_depth_mm=150.0, confidence_scale_px=48.0,
                 num_groups=3):
        self._num_groups = int(num_groups)
        super().__init__(backbone, width, input_size, num_joints, head_channels,
                         cube_half_depth_mm, confidence_scale_px)
        self.config['num_groups'] = self._num_groups

    def _build_heads(self, stage_channels, head_channels):
        k = self.num_joints
        in_channels = stage_channels[2] + stage_channels[3]
        self.grouping_module = JointGrouping(k, self._num_groups)
        self.branches = nn.ModuleList(
            nn.Sequential(conv_bn_relu(in_channels, head_channels),
                          conv_bn_relu(head_channels, head_channels))
            for _ in range(self._num_groups))
        self.fusion = GroupFusion(head_channels, self._num_groups)
        self.group_heads = nn.ModuleList(
            nn.Sequential(conv_bn_relu(head_channels, head_channels),
                          nn.Conv2d(head_channels, ANCHORS_PER_CELL * 4 * k, 3, padding=1))
            for _ in range(self._num_groups))

    def set_step(self, step):
        """Set the training step for the temperature schedule."""
        self.grouping_module.set_step(step)

    def grouping(self):
        """Return the most likely joint-to-group assignment (K lists of joint indices)."""
        return self.grouping_module.grouping()

    def _anchor_predictions(self, layer3, layer4):
        k = self.num_joints
        features = torch.cat([layer3, layer4], dim=1)
        groups = self.fusion([branch(features) for branch in self.branches])
        # Per group: (B, A, 4K) -> (B, A, K, 4) = (weight, offset u, offset v, depth).
        per_group = torch.stack(
            [per_anchor(head(g), 4 * k).reshape(g.shape[0], -1, k, 4)
             for head, g in zip(self.group_heads, groups)], dim=0)
        per_group = per_group.transpose(2, 3)  # (K_groups, B, N, A, 4)
        combined = select_per_joint(per_group, self.grouping_module.selectors())
        combined = combined.transpose(1, 2)  # (B, A, N, 4)
        return combined[..., 0], combined[..., 1:3], combined[..., 3]
