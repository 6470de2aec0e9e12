"""
CrossInfoNet: palm / finger branches with cross information (Du et al., CVPR 2019).

Layout for an S x S crop (S = 96 in the paper):

- initial feature module: residual stages at 1/2, 1/4, 1/8 and 1/16 of the input, merged
  by a top-down feature pyramid into 1/4-resolution features (24x24 at 96 px) that predict
  one heat-map per joint (auxiliary supervision); the features and heat-maps together are
  reduced to the shared feature map T (256 channels at 1/8, 12x12 at 96 px);
- palm branch P0 and finger branch F0 are residual blocks on T; the residual "attention"
  terms F- = T - P0 and P- = T - F0 are exchanged across branches: P1 = [P0, P-],
  F1 = [F0, F-]; P2 and F2 come from further residual blocks;
- each branch regresses its own joints with fully connected layers (dropout 0.6): the palm
  branch :data:`~hand_pose_ros.core.skeleton.PALM_JOINTS`, the finger branch
  :data:`~hand_pose_ros.core.skeleton.FINGER_GROUP_JOINTS`; the two sets are scattered back
  into the canonical joint order.

Loss: beta * MSE(joints) + alpha * MSE(heat-maps) with the paper's alpha = 0.01, beta = 1.
Joint MSE sums the squared x, y, z errors of a joint (normalised units) and averages over
labelled joints; heat-map MSE sums over the cells of a heat-map (Gaussian targets with
peak 1, sigma = 1 cell) and averages over labelled joints.

Confidence: the peak value of each joint's heat-map, clipped to [0, 1].
"""

import numpy as np
import torch
from torch import nn

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.models.a2j import check_input_size
from hand_pose_ros.core.models.losses import check_targets, gaussian_heatmaps, masked_mean
from hand_pose_ros.core.models.resnet import BasicBlock, conv_bn_relu, scaled_channels

HEATMAP_WEIGHT = 0.01
REGRESSION_WEIGHT = 1.0
HEATMAP_SIGMA_CELLS = 1.0


class BranchRegressor(nn.Module):
    """Residual block to 1/16, flatten, two FC layers with dropout, and joint regression."""

    def __init__(self, in_channels, channels, cells, num_joints, fc_dim, dropout):
        super().__init__()
        self.block = BasicBlock(in_channels, channels, stride=2)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * cells * cells, fc_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_dim, fc_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_dim, num_joints * 3))
        self.num_joints = num_joints

    def forward(self, x):
        return self.fc(self.block(x)).reshape(-1, self.num_joints, 3)


class CrossInfoNet(nn.Module):
    """
    CrossInfoNet network; see the module docstring.

    :param input_size: crop side in pixels, a multiple of 16 (96 in the paper).
    :param width: channel multiplier (1.0: T has 256 channels).
    :param num_joints: must be 21 (palm / finger split of the canonical skeleton).
    :param fc_dim: width of the per-branch fully connected layers.
    :param dropout: dropout probability before the regression layers (0.6 in the paper).
    :param backbone: accepted for a uniform registry config; only 'resnet18' style residual
        blocks are used here.
    """

    input_names = ('depth',)

    def __init__(self, input_size=96, width=1.0, num_joints=21, fc_dim=1024, dropout=0.6,
                 backbone='resnet18'):
        super().__init__()
        self.input_size = check_input_size(input_size)
        if num_joints != skeleton.NUM_JOINTS:
            raise ValueError(f'CrossInfoNet splits the {skeleton.NUM_JOINTS}-joint canonical '
                             f'skeleton into palm and fingers; got num_joints={num_joints}')
        if backbone != 'resnet18':
            raise ValueError('CrossInfoNet uses its own residual trunk; backbone must be '
                             f'resnet18, got {backbone!r}')
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f'dropout must be in [0, 1), got {dropout}')
        self.num_joints = num_joints
        self.config = {'input_size': self.input_size, 'width': float(width),
                       'num_joints': num_joints, 'fc_dim': int(fc_dim),
                       'dropout': float(dropout), 'backbone': backbone}
        c2, c4, c8, c16 = (scaled_channels(c, width) for c in (32, 64, 128, 256))
        pyramid = scaled_channels(128, width)
        shared = scaled_channels(256, width)
        self.heatmap_size = self.input_size // 4
        self.stem = conv_bn_relu(1, c2, kernel=5, stride=2)
        self.stage4 = BasicBlock(c2, c4, stride=2)
        self.stage8 = BasicBlock(c4, c8, stride=2)
        self.stage16 = BasicBlock(c8, c16, stride=2)
        self.lateral4 = nn.Conv2d(c4, pyramid, 1)
        self.lateral8 = nn.Conv2d(c8, pyramid, 1)
        self.lateral16 = nn.Conv2d(c16, pyramid, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode='nearest')
        self.smooth = conv_bn_relu(pyramid, pyramid)
        self.heatmap_head = nn.Conv2d(pyramid, num_joints, 1)
        self.to_shared = nn.Sequential(
            conv_bn_relu(pyramid + num_joints, shared, stride=2),
            BasicBlock(shared, shared))
        self.palm_block = BasicBlock(shared, shared)
        self.finger_block = BasicBlock(shared, shared)
        self.palm_joints = skeleton.PALM_JOINTS.tolist()
        self.finger_joints = skeleton.FINGER_GROUP_JOINTS.tolist()
        cells = self.input_size // 16
        self.palm_regressor = BranchRegressor(
            2 * shared, shared, cells, len(self.palm_joints), fc_dim, dropout)
        self.finger_regressor = BranchRegressor(
            2 * shared, shared, cells, len(self.finger_joints), fc_dim, dropout)
        order = np.argsort(np.concatenate([self.palm_joints, self.finger_joints]))
        self.register_buffer('canonical_order', torch.as_tensor(order), persistent=False)

    def forward(self, depth):
        """Estimate joints from (B, 1, S, S) normalised depth crops; see module docstring."""
        x4 = self.stage4(self.stem(depth))
        x8 = self.stage8(x4)
        x16 = self.stage16(x8)
        p16 = self.lateral16(x16)
        p8 = self.lateral8(x8) + self.upsample(p16)
        p4 = self.smooth(self.lateral4(x4) + self.upsample(p8))
        heatmaps = self.heatmap_head(p4)
        shared = self.to_shared(torch.cat([p4, heatmaps], dim=1))
        palm = self.palm_block(shared)
        finger = self.finger_block(shared)
        palm_joints = self.palm_regressor(torch.cat([palm, shared - finger], dim=1))
        finger_joints = self.finger_regressor(torch.cat([finger, shared - palm], dim=1))
        joints = torch.cat([palm_joints, finger_joints], dim=1)[:, self.canonical_order]
        peak = heatmaps.flatten(2).amax(dim=-1)
        return {'joints': joints, 'confidence': peak.clamp(0.0, 1.0), 'heatmaps': heatmaps}

    def loss(self, outputs, targets):
        """Return {'total', 'regression', 'heatmap'} with the paper's weights."""
        joints, valid = check_targets(targets, self.num_joints)
        regression = masked_mean(((outputs['joints'] - joints) ** 2).sum(dim=-1), valid)
        target_maps = gaussian_heatmaps(joints[..., :2], self.heatmap_size, HEATMAP_SIGMA_CELLS)
        heatmap = masked_mean(
            ((outputs['heatmaps'] - target_maps) ** 2).flatten(2).sum(dim=-1), valid)
        return {'total': REGRESSION_WEIGHT * regression + HEATMAP_WEIGHT * heatmap,
                'regression': regression, 'heatmap': heatmap}
