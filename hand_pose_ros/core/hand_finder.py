"""
Learned hand finder and its fusion with the geometric localiser.

The geometric localiser (:mod:`localizer`) misses hands it cannot separate from what they
touch (a palm on a chest, a hand in front of the face, fingers around an object) and
proposes arm ends and table corners. The finder, a small fully convolutional network
(``finder_training.HandFinderNet``, 0.18 M parameters, about 0.1 GMAC), looks at the whole
strided depth image (about 160 px wide, like the localiser) and predicts, CenterNet style,
a heat map of hand centres on a grid of 4x4 strided pixels, a sub-cell offset and the
centre's depth. It runs with ONNX Runtime on the CPU.

Input: two channels, depth minus 1 m where valid (``[MIN_DEPTH_M, MAX_DEPTH_M]``) else 0,
and the validity mask, zero-padded to a multiple of 8 pixels.

:class:`FusedLocalizer` takes the geometric candidates and the finder's peaks (a peak
within ``min_separation_m`` of a geometric candidate is that candidate) and scores each
with a logistic fit over both sources (:data:`FUSION_FEATURES`); the finder's heat is read
at every geometric candidate, so a candidate both agree on scores highest. The weights are
fitted per model (``hand_pose_evaluate --fit-hand-score``) and kept in the model card's
``finder`` section with the ONNX file's name; the card lists the file with its checksum.
"""

import logging
import math
from pathlib import Path
import time

import numpy as np
from scipy import ndimage

from hand_pose_ros.core.camera import uvd_from_xyz, xyz_from_uvd
from hand_pose_ros.core.crop import MIN_CENTER_DEPTH_M
from hand_pose_ros.core.localizer import logit, sigmoid

LOGGER = logging.getLogger(__name__)

TARGET_WIDTH_PX = 160
CELL_PX = 4
PAD_MULTIPLE = 8
MIN_DEPTH_M = 0.15
MAX_DEPTH_M = 2.0
DEPTH_OFFSET_M = 1.0
# Depth is regressed in decimetres so its L1 loss is on the heat map's scale.
DEPTH_UNIT_M = 0.1
OUTPUT_NAMES = ('heat', 'offset', 'center_depth')
# Fusion features of a candidate: bias, whether the geometric localiser proposed it, its
# geometric score logit (0 when not), the logit of the finder's heat at it.
FUSION_FEATURES = ('bias', 'geometric', 'geometric_logit', 'finder_logit')
# Peaks weaker than this are not proposed (the fused score decides among the rest).
PEAK_MIN_SCORE = 0.05
# Most geometric candidates and finder peaks considered per image.
MAX_PROPOSALS = 8


def image_stride(width):
    """Return the pixel stride that brings an image about ``TARGET_WIDTH_PX`` wide."""
    return max(1, int(round(width / TARGET_WIDTH_PX)))


def finder_input(depth_m, intrinsics):
    """
    Return the network input of one depth image and its stride.

    :param depth_m: (H, W) float metres, NaN invalid.
    :return: ((2, h, w) float32 with h, w multiples of ``PAD_MULTIPLE``, stride).
    """
    stride = image_stride(intrinsics.width)
    small = np.asarray(depth_m, dtype=np.float32)[::stride, ::stride]
    with np.errstate(invalid='ignore'):
        valid = (small >= MIN_DEPTH_M) & (small <= MAX_DEPTH_M)
    height, width = small.shape
    padded = (-height % PAD_MULTIPLE, -width % PAD_MULTIPLE)
    planes = np.zeros((2, height + padded[0], width + padded[1]), dtype=np.float32)
    planes[0, :height, :width] = np.where(valid, small - DEPTH_OFFSET_M, 0.0)
    planes[1, :height, :width] = valid
    return planes, stride


def decode_peaks(heat, offset, depth, stride, intrinsics, min_score, max_peaks):
    """
    Return up to ``max_peaks`` (score, center_xyz) of one image's heat map, best first.

    :param heat: (rows, cols) probabilities; offset (2, rows, cols); depth (rows, cols).
    """
    heat = np.asarray(heat, dtype=np.float64)
    padded = np.pad(heat, 1, constant_values=0.0)
    rows, cols = heat.shape
    local_max = np.ones(heat.shape, dtype=bool)
    for dr in range(3):
        for dc in range(3):
            local_max &= heat >= padded[dr:dr + rows, dc:dc + cols]
    candidates = np.flatnonzero(local_max & (heat >= min_score))
    order = candidates[np.argsort(-heat.ravel()[candidates])][:max_peaks]
    found = []
    for index in order:
        row, col = divmod(int(index), cols)
        u = (col + float(offset[0, row, col])) * CELL_PX * stride
        v = (row + float(offset[1, row, col])) * CELL_PX * stride
        z = DEPTH_OFFSET_M + float(depth[row, col]) * DEPTH_UNIT_M
        # The bounds a crop centre must meet (crop.check_center).
        if not (-0.5 <= u < intrinsics.width - 0.5 and -0.5 <= v < intrinsics.height - 0.5
                and z >= MIN_CENTER_DEPTH_M):
            continue
        found.append((float(heat[row, col]), xyz_from_uvd((u, v, z), intrinsics)))
    return found


class FoundHand:
    """A proposed hand: ``center_xyz`` (3,) metres and ``score`` in [0, 1]."""

    __slots__ = ('center_xyz', 'score')

    def __init__(self, center_xyz, score):
        self.center_xyz = center_xyz
        self.score = score


class LearnedHandFinder:
    """
    Run an exported finder network with ONNX Runtime.

    :param onnx_path: the finder's ONNX file.
    :param threads: intra-op threads (None: ONNX Runtime's default).
    """

    def __init__(self, onnx_path, threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: spinning finder threads held the cores
        # while the pose network ran next (its inference 5.4 -> 9.4 ms on 2 cores).
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.onnx_path = Path(onnx_path)
        self.session = onnxruntime.InferenceSession(str(onnx_path), sess_options=options,
                                                    providers=['CPUExecutionProvider'])

    def maps(self, depth_m, intrinsics):
        """
        Return (heat probabilities (rows, cols), offset (2, rows, cols), depth, stride).

        Heat is zeroed where no valid depth lies within one cell: a hand is seen there or
        nowhere, whatever the network makes of an empty region.
        """
        planes, stride = finder_input(depth_m, intrinsics)
        heat, offset, depth = self.session.run(list(OUTPUT_NAMES), {'depth': planes[None]})
        heat = sigmoid(heat[0, 0].astype(np.float64))
        rows, cols = heat.shape
        seen = planes[1].reshape(rows, CELL_PX, cols, CELL_PX).any(axis=(1, 3))
        heat[~ndimage.binary_dilation(seen, np.ones((3, 3), bool))] = 0.0
        return heat, offset[0], depth[0, 0], stride


def heat_at(heat, center_xyz, stride, intrinsics):
    """Return the largest heat within one cell of a point's cell (0 outside the map)."""
    u, v, z = uvd_from_xyz(np.asarray(center_xyz, dtype=np.float64), intrinsics)
    if not z > 0:
        return 0.0
    col = int(math.floor(u / stride / CELL_PX))
    row = int(math.floor(v / stride / CELL_PX))
    rows, cols = heat.shape
    if not (-1 <= row <= rows and -1 <= col <= cols):
        return 0.0
    window = heat[max(0, row - 1):row + 2, max(0, col - 1):col + 2]
    return float(window.max()) if window.size else 0.0


class FusedLocalizer:
    """
    Geometric candidates and learned-finder peaks, scored together (see module).

    :param geometric: :class:`~hand_pose_ros.core.localizer.DepthHandLocalizer`.
    :param finder: :class:`LearnedHandFinder`.
    :param weights: (4,) logistic weights over :data:`FUSION_FEATURES`.
    """

    def __init__(self, geometric, finder, weights):
        self.geometric = geometric
        self.finder = finder
        self.weights = np.asarray(weights, dtype=np.float64).reshape(len(FUSION_FEATURES))
        # Milliseconds the finder network took in the latest call (the estimator's 'find').
        self.last_find_ms = 0.0

    @property
    def config(self):
        """Return the geometric localiser's :class:`LocalizerConfig` (depth range, separation)."""
        return self.geometric.config

    def with_config(self, config):
        """Return this localiser with the geometric part rebuilt from ``config``."""
        return FusedLocalizer(self.geometric.with_config(config), self.finder, self.weights)

    def proposals(self, depth_m, intrinsics):
        """
        Return every proposal: list of (center_xyz, features (4,)).

        Geometric candidates come first; a finder peak within ``min_separation_m`` of one
        of them is that candidate, other peaks inside the depth range are new proposals.
        """
        cfg = self.geometric.config
        geometric = self.geometric.locate(depth_m, intrinsics, max_hands=MAX_PROPOSALS)
        start = time.perf_counter()
        heat, offset, depth, stride = self.finder.maps(depth_m, intrinsics)
        self.last_find_ms = (time.perf_counter() - start) * 1e3
        found = [(c.center_xyz, np.array([1.0, 1.0, logit(c.score), logit(
            heat_at(heat, c.center_xyz, stride, intrinsics))])) for c in geometric]
        for score, center in decode_peaks(heat, offset, depth, stride, intrinsics,
                                          PEAK_MIN_SCORE, MAX_PROPOSALS):
            if not cfg.min_depth_m <= center[2] <= cfg.max_depth_m:
                continue
            if all(np.linalg.norm(center - c.center_xyz) > cfg.min_separation_m
                   for c in geometric):
                found.append((center, np.array([1.0, 0.0, 0.0, logit(score)])))
        return found

    def locate(self, depth_m, intrinsics, max_hands=2):
        """Return up to ``max_hands`` :class:`FoundHand`, the most likely first."""
        scored = sorted(((float(sigmoid(self.weights @ features)), center)
                         for center, features in self.proposals(depth_m, intrinsics)),
                        key=lambda item: -item[0])
        kept = []
        for score, center in scored:
            if all(np.linalg.norm(center - other.center_xyz) > self.config.min_separation_m
                   for other in kept):
                kept.append(FoundHand(center, score))
        return kept[:max(0, int(max_hands))]
