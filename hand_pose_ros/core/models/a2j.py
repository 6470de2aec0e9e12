"""
A2J: anchor-to-joint regression from a single depth crop (Xiong et al., ICCV 2019).

A ResNet trunk with a dilated last stage (features at 1/16 of the input) feeds three
heads: anchor weights (on layer3), in-plane offsets and depths (on layer4). Each feature
cell carries 16 anchors at pixel offsets 2, 6, 10, 14, i.e. a 4 px anchor grid (1936 anchors
for a 176 px crop). A joint is the softmax-over-anchors weighted sum of anchor + offset;
its depth is the weighted sum of the per-anchor depths. The decode runs inside ``forward``
so the exported graph returns joints directly.

The paper copies the depth crop to three channels to reuse ImageNet weights; trained from
scratch here, the first convolution takes the single depth channel directly (same
function, a third of the first layer's work).

Units. Inputs and outputs follow the package's model contract (normalised crop
coordinates, see :mod:`hand_pose_ros.core.models`). Internally the offset head predicts in
units of the feature stride (16 input pixels): an equivalent parametrisation of the
paper's pixel offsets that keeps the raw outputs near unit scale for training from scratch.
The depth head predicts the normalised depth directly.

Losses keep the paper's thresholds meaningful in normalised units: in-plane errors are
scaled to pixels of the paper's 176 px crop (x 88), so tau1 = 1 means one reference pixel
(about 1.1 mm for a 200 mm crop cube) whatever the actual input size; depth errors are
scaled by ``cube_half_depth_mm`` (default 150 mm, the paper's depth window) to millimetres,
so tau2 = 3 means 3 mm.

Confidence. For each joint, the weighted in-plane spread of the anchor predictions
(anchor + offset) around the decoded joint, s = sqrt(sum_a w_a |p_a - joint|^2), in
reference pixels, mapped to (0, 1] as exp(-s / confidence_scale_px): 1 when all weighted
anchors agree. A2J spreads its weights over many anchors, so s stays tens of reference
pixels even for accurate joints (about 50 on a converged toy task, where it correlated
with the error at r = 0.76); the default scale of 48 puts such joints near 0.37. Calibrate
it on validation data (s = -scale * ln(confidence)) and store it in the model config.
"""

import torch
from torch import nn

from hand_pose_ros.core.models.losses import check_targets, masked_mean, smooth_l1_tau
from hand_pose_ros.core.models.resnet import conv_bn_relu, ResNet

FEATURE_STRIDE = 16
ANCHOR_OFFSETS_PX = (2, 6, 10, 14)
ANCHORS_PER_CELL = len(ANCHOR_OFFSETS_PX) ** 2
REFERENCE_INPUT_SIZE = 176
ALPHA = 0.5
TAU_IN_PLANE = 1.0
TAU_DEPTH_MM = 3.0
JOINT_LOSS_WEIGHT = 3.0


def check_input_size(input_size, multiple=FEATURE_STRIDE):
    """Raise ValueError unless ``input_size`` is a positive multiple of ``multiple``."""
    if int(input_size) != input_size or input_size <= 0 or input_size % multiple:
        raise ValueError(f'input_size must be a positive multiple of {multiple}, '
                         f'got {input_size}')
    return int(input_size)


def anchor_grid_px(input_size):
    """
    Return (A, 2) anchor (u, v) pixel positions for a square crop.

    Anchors are ordered by feature cell (row-major) then by the 16 anchors in the cell
    (row-major over the 4x4 offsets), matching the channel layout of the heads.
    """
    cells = check_input_size(input_size) // FEATURE_STRIDE
    offsets = torch.tensor(ANCHOR_OFFSETS_PX, dtype=torch.float32)
    cell_origin = torch.arange(cells, dtype=torch.float32) * FEATURE_STRIDE
    v = (cell_origin[:, None, None, None] + offsets[None, None, :, None])
    u = (cell_origin[None, :, None, None] + offsets[None, None, None, :])
    v, u = torch.broadcast_tensors(v, u)
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


class A2JHead(nn.Module):
    """
    Four 3x3 conv (+BN+ReLU) layers and a 3x3 output conv with one value set per anchor.

    :param in_channels: feature channels.
    :param values_per_anchor: outputs per anchor (K, 2K or K).
    :param channels: width of the hidden convolutions (256 in the paper).
    """

    def __init__(self, in_channels, values_per_anchor, channels=256):
        super().__init__()
        layers = [conv_bn_relu(in_channels, channels)]
        layers += [conv_bn_relu(channels, channels) for _ in range(3)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, ANCHORS_PER_CELL * values_per_anchor, 3, padding=1)
        self.values_per_anchor = values_per_anchor

    def forward(self, x):
        """Return (B, A, values_per_anchor) with anchors ordered as :func:`anchor_grid_px`."""
        return per_anchor(self.out(self.body(x)), self.values_per_anchor)


def per_anchor(maps, values_per_anchor):
    """Reshape (B, 16*V, F, F) head maps into (B, F*F*16, V)."""
    return maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1, values_per_anchor)


def decode_anchors(weight_logits, offsets, depths, anchors_norm, input_size,
                   confidence_scale_px):
    """
    Turn per-anchor predictions into joints (the in-graph A2J decode).

    :param weight_logits: (B, A, K) anchor-weight logits.
    :param offsets: (B, A, K, 2) in-plane offsets in feature-stride units.
    :param depths: (B, A, K) normalised depths.
    :param anchors_norm: (A, 2) anchor positions in normalised crop coordinates.
    :param input_size: crop side in pixels.
    :param confidence_scale_px: spread (reference pixels) that maps to confidence 1/e.
    :return: dict with 'joints' (B, K, 3), 'confidence' (B, K), 'anchor_weights' (B, A, K)
        and 'anchor_uv' (B, K, 2), the weighted anchor positions used by the surrounding loss.
    """
    weights = torch.softmax(weight_logits, dim=1)
    stride_norm = 2.0 * FEATURE_STRIDE / input_size
    predictions = anchors_norm[None, :, None, :] + offsets * stride_norm
    joints_uv = (weights[..., None] * predictions).sum(dim=1)
    joints_z = (weights * depths).sum(dim=1)
    spread_sq = (weights * ((predictions - joints_uv[:, None]) ** 2).sum(dim=-1)).sum(dim=1)
    spread_ref_px = torch.sqrt(spread_sq + 1e-12) * (REFERENCE_INPUT_SIZE / 2.0)
    return {
        'joints': torch.cat([joints_uv, joints_z[..., None]], dim=-1),
        'confidence': torch.exp(-spread_ref_px / confidence_scale_px),
        'anchor_weights': weights,
        'anchor_uv': torch.einsum('bak,ad->bkd', weights, anchors_norm),
    }


class A2J(nn.Module):
    """
    A2J network; see the module docstring for units, losses and confidence.

    :param backbone: 'resnet18', 'resnet34' or 'resnet50'.
    :param width: backbone channel multiplier.
    :param input_size: crop side in pixels, a multiple of 16 (176 in the paper).
    :param num_joints: joints K.
    :param head_channels: hidden width of the three heads (256 in the paper).
    :param cube_half_depth_mm: half depth of the crop cube; only scales the depth loss.
    :param confidence_scale_px: anchor spread (reference pixels) giving confidence 1/e.
    """

    input_names = ('depth',)

    def __init__(self, backbone='resnet50', width=1.0, input_size=176, num_joints=21,
                 head_channels=256, cube_half_depth_mm=150.0, confidence_scale_px=48.0):
        super().__init__()
        self.input_size = check_input_size(input_size)
        if cube_half_depth_mm <= 0:
            raise ValueError(f'cube_half_depth_mm must be positive, got {cube_half_depth_mm}')
        if confidence_scale_px <= 0:
            raise ValueError(f'confidence_scale_px must be positive, got {confidence_scale_px}')
        self.confidence_scale_px = float(confidence_scale_px)
        self.num_joints = int(num_joints)
        self.cube_half_depth_mm = float(cube_half_depth_mm)
        self.config = {
            'backbone': backbone, 'width': float(width), 'input_size': self.input_size,
            'num_joints': self.num_joints, 'head_channels': int(head_channels),
            'cube_half_depth_mm': self.cube_half_depth_mm,
            'confidence_scale_px': self.confidence_scale_px}
        self.backbone = ResNet(backbone, width, in_channels=1, dilate_layer4=True)
        self._build_heads(self.backbone.stage_channels, int(head_channels))
        anchors_px = anchor_grid_px(self.input_size)
        self.register_buffer(
            'anchors_norm', (anchors_px + 0.5) / self.input_size * 2.0 - 1.0, persistent=False)

    @property
    def num_anchors(self):
        """Return the number of anchors A."""
        return self.anchors_norm.shape[0]

    def _build_heads(self, stage_channels, head_channels):
        k = self.num_joints
        self.weight_head = A2JHead(stage_channels[2], k, head_channels)
        self.offset_head = A2JHead(stage_channels[3], 2 * k, head_channels)
        self.depth_head = A2JHead(stage_channels[3], k, head_channels)

    def _anchor_predictions(self, layer3, layer4):
        """Return weight logits (B, A, K), offsets (B, A, K, 2) and depths (B, A, K)."""
        offsets = self.offset_head(layer4)
        offsets = offsets.reshape(offsets.shape[0], -1, self.num_joints, 2)
        return self.weight_head(layer3), offsets, self.depth_head(layer4)

    def forward(self, depth):
        """Estimate joints from (B, 1, S, S) normalised depth crops; see module docstring."""
        _, _, layer3, layer4 = self.backbone(depth)
        weight_logits, offsets, depths = self._anchor_predictions(layer3, layer4)
        return decode_anchors(weight_logits, offsets, depths, self.anchors_norm,
                              self.input_size, self.confidence_scale_px)

    def loss(self, outputs, targets):
        """Return {'total', 'joint', 'surrounding'}: total = 3 * joint + surrounding."""
        joints, valid = check_targets(targets, self.num_joints)
        to_ref_px = REFERENCE_INPUT_SIZE / 2.0
        uv_error = (outputs['joints'][..., :2] - joints[..., :2]) * to_ref_px
        z_error = (outputs['joints'][..., 2] - joints[..., 2]) * self.cube_half_depth_mm
        joint = masked_mean(
            ALPHA * smooth_l1_tau(uv_error, TAU_IN_PLANE).sum(dim=-1)
            + smooth_l1_tau(z_error, TAU_DEPTH_MM), valid)
        surround_error = (outputs['anchor_uv'] - joints[..., :2]) * to_ref_px
        surrounding = masked_mean(smooth_l1_tau(surround_error, TAU_IN_PLANE).sum(dim=-1), valid)
        return {'total': JOINT_LOSS_WEIGHT * joint + surrounding,
                'joint': joint, 'surrounding': surrounding}
