"""
Self-supervised adaptation of a hand pose model to an unlabelled depth recording.

The loop of the "self-supervised optimisation with anatomical features and iterative
learning" method (reference.md): run the estimator on every frame, drop poses that break
anatomy (bone lengths, hand size, joint angles, intersections), that come with too many
hands or too little confidence, and those the offline temporal filter (two-way velocity
gates, RTS smoothing, short-gap interpolation) rejects; the surviving smoothed poses are
pseudo-labels. The model is fine-tuned on them, mixed with synthetic crops so it does not
forget, and the loop repeats until the pass rate stops improving. The synthetic crops are
rendered to look like the recording (``fit_domain``, :mod:`hand_pose_ros.core.domain_fit`):
the recording's camera and hand distances, and the depth noise, glove thickness and share
of held objects whose rendered statistics match the recording's, measured around round 0's
hands; no label is needed for that either. ``start_domain_fraction`` of them stay in the
start model's own domain, which it must not forget. The hand finder is kept as it is: only
the pose network is retrained.

Rounds: round 0 runs the starting model; round ``r >= 1`` fine-tunes the model of round
``r - 1`` on that round's pseudo-labels, mixed with synthetic crops of its own (rendered
for that round), and runs the result. A held-out part never gives pseudo-labels:
``holdout_blocks`` contiguous blocks spread evenly over the recording, together
``holdout_fraction`` of its frames (:func:`holdout_mask`), so that no single hand, motion or
scene of the recording decides alone. The model kept is the round with the best label-free
criterion on the held-out part::

    criterion = pass rate - smoothing residual (mm) / 100

(one percent of pass rate is worth one millimetre of mean distance between the raw and the
temporally smoothed keypoints, i.e. jitter and outliers the filter had to remove). The
temporal filter runs on each stretch of consecutive frames of one part on its own (each
held-out block, each pseudo-label stretch between them), so no smoothing reaches across a
block; the metrics of a part count its frames together.

Output folder::

    state.json                 resumable run state (updated after every stage)
    iter_00/                   estimates.npz, pseudo_labels.npz, report.json (its
                               ``holdout_spans``: the held-out blocks, [start, end) among the
                               frames read), report.md, timeline.png (start model)
    iter_01/                   the same for round 1's model; train/ (trainer run; train/pool:
    ...                        the round's pseudo-labelled and synthetic crops),
                               pool_info.json, iter_01.yaml/.safetensors; synthetic/ while
                               the pool is built (the round's synthetic crops: the fitted
                               domain, else the start model's training domain)
    domain.json                the fitted synthetic domain (``fit_domain``): its settings and
                               the statistics of the recording and of rendered crops
    control/iter_01/ ...       :meth:`SelfTrainer.control_run` rounds (synthetic crops only)
    NAME.yaml (+ .safetensors, .onnx)   the adapted model (best round), report.json,
                               report.md, progress.png
"""

from dataclasses import dataclass, field, fields, replace
import json
import logging
import math
import os
from pathlib import Path
import shutil
import sys
import time

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, depth_to_metres
from hand_pose_ros.core.crop import check_views
from hand_pose_ros.core.filters import anatomy
from hand_pose_ros.core.filters.config import config_from_dict, FilterConfig
from hand_pose_ros.core.filters.offline import offline_filter
from hand_pose_ros.core.model_io import atomic_file, write_atomic
from hand_pose_ros.core.skeleton import BONES, NUM_JOINTS

LOGGER = logging.getLogger(__name__)

STATE_FILE = 'state.json'
STATUS_NAMES = ('kept', 'no_detection', 'hand_count', 'low_confidence', 'anatomy', 'temporal')
KEPT, NO_DETECTION, HAND_COUNT, LOW_CONFIDENCE, ANATOMY, TEMPORAL = range(len(STATUS_NAMES))
STATUS_COLOURS = ((44, 160, 44), (200, 200, 200), (148, 103, 189), (255, 127, 14),
                  (214, 39, 40), (31, 119, 180))
HOLDOUT_SHADE = (225, 225, 240)
_ESTIMATE_KEYS = ('frame_index', 'stamps_ns', 'keypoints', 'scores')
FILTER_DEFAULTS = {'min_score': 0.0}
# A third of a second at 30 Hz: the two-way gates of a block need a few frames to predict
# from in each direction, and a block of a few frames would be measured mostly at its edges.
MIN_HOLDOUT_BLOCK_FRAMES = 10
# Settings added after runs were made, at the values that reproduce those runs (a resumed
# run's stored settings are completed with them): one held-out block, at the end; every
# joint of a kept pose a label.
_SETTINGS_OF_OLDER_RUNS = {'holdout_blocks': 1, 'joint_score_quantile': 0.0}
# Settings a resumed run may change besides when it stops (every other one must match):
# where and how fast it computes, not what.
_EXECUTION_SETTINGS = ('device', 'num_threads')
# When the loop stops: a resumed run may go on past a stop (the rounds done stay). The
# state records a stop by either rule in a message ending / starting with these.
_STOPPING_SETTINGS = ('iterations', 'min_improvement')
_STOPPED_BY_COUNT = ' iterations done'
_STOPPED_BY_GAIN = 'pass rate stopped improving'


@dataclass
class SelfTrainConfig:
    """
    Settings of a self-training run (plain values: stored in ``state.json``).

    :param iterations: most fine-tuning rounds.
    :param min_improvement: a round whose pass rate (pseudo-label part) is not at least
        this much above the previous round's ends the loop.
    :param holdout_fraction: share of the recording's frames held out for model selection
        (never pseudo-labelled).
    :param holdout_blocks: contiguous blocks the held-out frames form, spread evenly over
        the recording (fewer on a recording too short for blocks of
        ``MIN_HOLDOUT_BLOCK_FRAMES``; see :func:`holdout_mask`).
    :param max_frames: frames read from the recording (0: all).
    :param max_hands: hands expected per frame; frames with more confident hands are
        dropped (the poses of crowded frames are ambiguous).
    :param min_detection_score: ``HandPose.detection_score`` (the model's hand score, else
        the localiser's) for a hand to count.
    :param min_mean_score: mean joint confidence for a pose to pass.
    :param score_quantile: also drop the least confident detections of each part of the
        recording: the pass threshold is at least this quantile of their mean joint
        confidences (confidence scales differ between models, a quantile does not).
    :param joint_score_quantile: leave the least confident joints of the kept poses out of
        the fine-tuning loss: a joint below this quantile of all kept joints' confidences
        is unlabelled in its crop (0: every joint of a kept pose is a label).
    :param max_residual_m: largest mean distance between the raw joints and their
        temporally smoothed positions for the frame to pass (jitter and outliers).
    :param pose_checks: also apply the joint-angle, finger-intersection and tight bone
        proportion checks to the smoothed pose. Off by default: with the centimetre noise
        of estimated keypoints they reject nearly every frame (angles of 2-3 cm bones are
        meaningless at that noise), and the paper's spatial filter is bones, hand size and
        hand count only.
    :param filter_overrides: dotted :class:`FilterConfig` overrides for the anatomy and
        offline temporal filter (e.g. ``{'gates.palm_max_speed_m_s': 2.0}``), applied on
        top of ``FILTER_DEFAULTS`` (the temporal filter keeps every joint of a pose that
        passed the confidence rule here, whatever the model's confidence scale).
    :param min_pseudo_labels: fewer pseudo-labelled frames end the loop.
    :param synthetic_fraction: share of synthetic crops in the fine-tuning pool. The
        defaults here (0.95, 3,200 steps, ``lr`` 1e-4) are the first that improved the
        domain-shift experiment's labelled domain B (README, "Self-supervised adaptation");
        shorter rounds on more pseudo-labels never did.
    :param steps: fine-tuning steps per round.
    :param batch_size: crops per step.
    :param lr: peak fine-tuning learning rate (cosine schedule).
    :param warmup_steps: linear warm-up steps.
    :param chunk_size: crops per pool file.
    :param checkpoint_every: steps between trainer checkpoints (resume points).
    :param seed: seed of fine-tuning and synthetic crops.
    :param fit_domain: render the synthetic crops in the domain fitted to the recording
        (:func:`hand_pose_ros.core.domain_fit.fit_domain`) instead of the start model's
        training domain.
    :param start_domain_fraction: with ``fit_domain``, the share of synthetic crops still
        rendered in the start model's training domain, so that it is not forgotten.
    :param domain_fit_frames: most recording frames (of the pseudo-label part, with a hand in
        round 0) measured by the domain fit.
    :param domain_fit_crops: rendered crops per evaluation of a setting in the domain fit.
    :param label_views: test-time views per crop when estimating the recording (1, 2, 4
        or 8; the mean over the views is a better pseudo-label than one view).
    :param freeze_batchnorm: fine-tune with the start model's BatchNorm statistics (see
        :class:`~hand_pose_ros.core.training.TrainConfig`): a few hundred crops of one
        recording would otherwise replace them, and with them the whole network's
        calibration.
    :param backend: estimator backend for the rounds ('torch' needs no ONNX export).
    :param device: 'auto', 'cpu' or 'cuda' (estimation and fine-tuning).
    :param num_threads: torch CPU threads (0: default).
    :param name: name of the adapted model (card ``NAME.yaml``).
    :param export_onnx: export the adapted model to ONNX (needed by the 'auto' backend).
    """

    iterations: int = 3
    min_improvement: float = 0.005
    holdout_fraction: float = 0.2
    holdout_blocks: int = 4
    max_frames: int = 0
    max_hands: int = 1
    min_detection_score: float = 0.3
    min_mean_score: float = 0.0
    score_quantile: float = 0.25
    joint_score_quantile: float = 0.0
    max_residual_m: float = 0.02
    pose_checks: bool = False
    filter_overrides: dict = field(default_factory=dict)
    min_pseudo_labels: int = 16
    synthetic_fraction: float = 0.95
    steps: int = 3200
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 20
    chunk_size: int = 64
    checkpoint_every: int = 100
    seed: int = 0
    fit_domain: bool = True
    start_domain_fraction: float = 0.5
    domain_fit_frames: int = 200
    domain_fit_crops: int = 200
    label_views: int = 8
    freeze_batchnorm: bool = True
    backend: str = 'torch'
    device: str = 'cpu'
    num_threads: int = 0
    name: str = 'adapted'
    export_onnx: bool = True

    def __post_init__(self):
        for key in ('iterations', 'holdout_blocks', 'max_hands', 'steps', 'batch_size',
                    'chunk_size', 'checkpoint_every', 'min_pseudo_labels', 'domain_fit_frames',
                    'domain_fit_crops'):
            if int(getattr(self, key)) < 1:
                raise ValueError(f'{key} must be >= 1, got {getattr(self, key)!r}')
        for key in ('max_frames', 'warmup_steps', 'num_threads', 'seed'):
            if int(getattr(self, key)) < 0:
                raise ValueError(f'{key} must be >= 0, got {getattr(self, key)!r}')
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f'holdout_fraction must be in (0, 1), got {self.holdout_fraction}')
        if not 0.0 <= self.start_domain_fraction <= 1.0:
            raise ValueError(f'start_domain_fraction must be in [0, 1], '
                             f'got {self.start_domain_fraction}')
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise ValueError(f'synthetic_fraction must be in [0, 1), '
                             f'got {self.synthetic_fraction}')
        for key in ('min_detection_score', 'min_mean_score'):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f'{key} must be in [0, 1], got {getattr(self, key)}')
        if not -1.0 <= self.min_improvement <= 1.0:
            raise ValueError(f'min_improvement must be in [-1, 1], got {self.min_improvement}')
        if not self.max_residual_m > 0 or not self.lr > 0:
            raise ValueError('max_residual_m and lr must be positive')
        try:
            check_views(self.label_views)
        except ValueError as error:
            raise ValueError(f'label_{error}') from None
        for key in ('score_quantile', 'joint_score_quantile'):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f'{key} must be in [0, 1), got {getattr(self, key)}')
        self.filter_config = config_from_dict({**FILTER_DEFAULTS, **self.filter_overrides},
                                              base=FilterConfig())

    def to_dict(self):
        """Return the settings as plain values."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, values):
        """Build from a plain dict; unknown keys raise ValueError."""
        unknown = set(values) - {item.name for item in fields(cls)}
        if unknown:
            raise ValueError(f'unknown self-training keys: {sorted(unknown)}')
        return cls(**values)


# --------------------------------------------------------------------------- pseudo-labels


@dataclass
class Selection:
    """
    Result of the pseudo-label filter over a recording (or a part of one).

    :param status: (T,) int codes, index into ``STATUS_NAMES`` (0: kept).
    :param keypoints: (T, 21, 3) raw pose of the chosen hand per frame (the one that passed
        the spatial checks, else the most confident candidate), NaN: no detection.
    :param scores: (T, 21) joint confidences of the chosen hand.
    :param labels: (T, 21, 3) temporally smoothed keypoints of kept frames, NaN elsewhere.
    :param smoothed: (T, 21, 3) smoothed keypoints of every spatially valid frame.
    :param residual_m: (T,) mean raw-to-smoothed joint distance (NaN: not measured).
    :param spatial_ok: (T,) bool, passed the spatial checks.
    """

    status: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    smoothed: np.ndarray
    residual_m: np.ndarray
    spatial_ok: np.ndarray


def spatial_problem(keypoints, scores, config, min_mean_score=None):
    """
    Return the status code of one hand candidate under the spatial checks.

    :param keypoints: (21, 3) metres (NaN: no detection).
    :param scores: (21,) confidences.
    :param config: :class:`SelfTrainConfig`.
    :param min_mean_score: confidence threshold (default ``config.min_mean_score``).
    :return: ``KEPT`` or the code of the first failed check (confidence, hand size, bones).
    """
    if not np.all(np.isfinite(keypoints)):
        return NO_DETECTION
    threshold = config.min_mean_score if min_mean_score is None else min_mean_score
    if float(np.mean(scores)) < threshold:
        return LOW_CONFIDENCE
    checks = config.filter_config.anatomy
    present = np.ones(NUM_JOINTS, bool)
    if anatomy.hand_level_problems(checks, keypoints, present):
        return ANATOMY
    if _any_blamed(anatomy.check_bones(checks, keypoints, present)):
        return ANATOMY
    return KEPT


def _any_blamed(blamed):
    return any(np.any(joints) for joints in blamed.values())


def choose_hands(keypoints, scores, config):
    """
    Apply the spatial checks to every candidate of every frame and pick one hand per frame.

    Candidates failing the checks are dropped (a tool, a sleeve, a bad pose); a frame with
    more passing hands than ``config.max_hands`` is ambiguous (``HAND_COUNT``). The
    confidence threshold is ``min_mean_score`` or the ``score_quantile`` of all candidates'
    mean confidences, whichever is higher.

    :param keypoints: (T, K, 21, 3) candidates, most confident first, NaN: none.
    :param scores: (T, K, 21).
    :return: (status (T,), chosen keypoints (T, 21, 3), chosen scores (T, 21)).
    """
    count = len(keypoints)
    status = np.full(count, NO_DETECTION, dtype=np.int64)
    chosen = np.full((count, NUM_JOINTS, 3), np.nan)
    chosen_scores = np.zeros((count, NUM_JOINTS))
    found = np.all(np.isfinite(keypoints), axis=(2, 3))
    threshold = config.min_mean_score
    if found.any() and config.score_quantile > 0:
        threshold = max(threshold, float(np.quantile(scores[found].mean(axis=-1),
                                                     config.score_quantile)))
    for t in range(count):
        codes = [spatial_problem(keypoints[t, k], scores[t, k], config, threshold)
                 for k in range(keypoints.shape[1])]
        passing = [k for k, code in enumerate(codes) if code == KEPT]
        pick = passing[0] if passing else 0
        chosen[t], chosen_scores[t] = keypoints[t, pick], scores[t, pick]
        if len(passing) > config.max_hands:
            status[t] = HAND_COUNT
        else:
            status[t] = codes[pick]
    return status, chosen, chosen_scores


def select_pseudo_labels(stamps_s, keypoints, scores, config, parts=None):
    """
    Run the spatial and offline temporal filters; return a :class:`Selection`.

    Spatial checks on every raw candidate (confidence, hand size, bones, hand count), then
    the offline temporal filter (two-way gates, smoothing, gap interpolation) on the chosen
    hand and a jitter bound (``max_residual_m``), then optionally (``pose_checks``) joint
    angles, finger intersections and bone proportions of the smoothed pseudo-label.

    :param stamps_s: (T,) strictly increasing stamps, seconds.
    :param keypoints: (T, K, 21, 3) hand candidates per frame, most confident first, metres,
        NaN where there is none; (T, 21, 3) for one candidate per frame.
    :param scores: (T, K, 21) or (T, 21) joint confidences.
    :param config: :class:`SelfTrainConfig`.
    :param parts: (T,) part of each frame (e.g. the held-out mask of :func:`holdout_mask`;
        default: one part). Each part gets its own confidence threshold (``score_quantile``
        of its candidates), and the temporal filter runs on each stretch of consecutive
        frames of one part on its own: no gate or smoothing reaches across another part.
    """
    stamps_s = np.asarray(stamps_s, dtype=np.float64)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if keypoints.ndim == 3:
        keypoints, scores = keypoints[:, None], scores[:, None]
    if keypoints.ndim != 4 or keypoints.shape[2:] != (NUM_JOINTS, 3) \
            or scores.shape != keypoints.shape[:3]:
        raise ValueError(f'expected keypoints (T, K, 21, 3) and scores (T, K, 21), got '
                         f'{keypoints.shape} and {scores.shape}')
    count = len(keypoints)
    parts = np.zeros(count, np.int64) if parts is None else np.asarray(parts)
    if parts.shape != (count,):
        raise ValueError(f'expected parts ({count},), got {parts.shape}')
    status = np.empty(count, np.int64)
    chosen = np.empty((count, NUM_JOINTS, 3))
    chosen_scores = np.empty((count, NUM_JOINTS))
    for part in np.unique(parts):
        rows = parts == part
        status[rows], chosen[rows], chosen_scores[rows] = choose_hands(
            keypoints[rows], scores[rows], config)
    spatial_ok = status == KEPT
    residual = np.full(count, np.nan)
    smoothed = np.full(chosen.shape, np.nan)
    if count == 0 or not spatial_ok.any():
        return Selection(status, chosen, chosen_scores, smoothed.copy(), smoothed, residual,
                         spatial_ok)
    observed = np.where(spatial_ok[:, None, None], chosen, np.nan)
    valid = np.zeros((count, NUM_JOINTS), bool)
    for start, stop in _runs(parts):
        smoothed[start:stop], valid[start:stop] = offline_filter(
            stamps_s[start:stop], observed[start:stop], chosen_scores[start:stop],
            config.filter_config)
    with np.errstate(invalid='ignore'):
        residual = np.mean(np.linalg.norm(observed - smoothed, axis=-1), axis=1)
        temporal_bad = spatial_ok & ~(np.all(valid, axis=1) & (residual <= config.max_residual_m))
    status[temporal_bad] = TEMPORAL
    if config.pose_checks:
        checks = config.filter_config.anatomy
        for t in np.flatnonzero(status == KEPT):
            # The recording does not say which hand it shows, and flexion angles change sign
            # between the two: a pose plausible as either hand passes.
            if all(_any_blamed(anatomy.check_pose(checks, smoothed[t], side))
                   for side in ('right', 'left')):
                status[t] = ANATOMY
    labels = np.where((status == KEPT)[:, None, None], smoothed, np.nan)
    return Selection(status, chosen, chosen_scores, labels, smoothed, residual, spatial_ok)


def confident_joints(scores, quantile):
    """
    Return the (N, 21) mask of the pseudo-label joints that stay labels.

    :param scores: (N, 21) joint confidences of the kept poses.
    :param quantile: joints below this quantile of all of them are dropped (0: none).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if quantile <= 0 or scores.size == 0:
        return np.ones(scores.shape, bool)
    return scores >= np.quantile(scores, quantile)


def consistency_metrics(selection, part=None):
    """
    Return the label-free metrics of one part of a recording (dict of plain values).

    Keys: frames, detections, detection_rate, kept, pass_rate, rejected (per reason),
    mean_score, residual_mm (mean raw-to-smoothed joint distance over frames that passed
    the spatial checks and got a smoothed pose), accel_mm (mean second difference of the
    joints over three consecutive spatially valid frames of the part, mm/frame^2), bone_cv
    (median over bones of the coefficient of variation of the bone length within each
    stretch of consecutive frames, averaged over the stretches weighted by their valid
    frames; a person's bones do not change, but another stretch may show another person),
    criterion (see the module docstring). Rates and means are over all frames of the part,
    whatever stretch they are in.

    :param selection: :class:`Selection` of T frames.
    :param part: (T,) bool, the frames measured, e.g. the held-out blocks (default: all).
    """
    keypoints = selection.keypoints
    part = np.ones(len(keypoints), bool) if part is None else np.asarray(part, bool)
    frames = int(np.count_nonzero(part))
    status = selection.status[part]
    detected = status != NO_DETECTION
    kept = int(np.count_nonzero(status == KEPT))
    out = {'frames': frames, 'detections': int(detected.sum()),
           'detection_rate': float(detected.mean()) if frames else 0.0,
           'kept': kept, 'pass_rate': kept / frames if frames else 0.0,
           'rejected': {name: int(np.count_nonzero(status == code))
                        for code, name in enumerate(STATUS_NAMES) if code != KEPT},
           'mean_score': float(np.mean(selection.scores[part][detected]))
           if detected.any() else 0.0}
    ok = selection.spatial_ok & part
    distance = np.linalg.norm(keypoints[ok] - selection.smoothed[ok], axis=-1)
    out['residual_mm'] = float(np.nanmean(distance) * 1000.0) \
        if np.isfinite(distance).any() else math.nan
    triple = ok[:-2] & ok[1:-1] & ok[2:]
    if triple.any():
        second = keypoints[:-2] - 2.0 * keypoints[1:-1] + keypoints[2:]
        out['accel_mm'] = float(np.mean(np.linalg.norm(second[triple], axis=-1)) * 1000.0)
    else:
        out['accel_mm'] = math.nan
    variation, weights = [], []
    for start, stop in _runs(part):
        valid = keypoints[start:stop][ok[start:stop]]
        if len(valid) >= 2:
            bones = np.linalg.norm(valid[:, BONES[:, 1]] - valid[:, BONES[:, 0]], axis=-1)
            variation.append(bones.std(axis=0) / bones.mean(axis=0))
            weights.append(len(valid))
    out['bone_cv'] = float(np.median(np.average(variation, axis=0, weights=weights))) \
        if variation else math.nan
    residual = out['residual_mm'] if math.isfinite(out['residual_mm']) else 0.0
    out['criterion'] = out['pass_rate'] - residual / 100.0
    return out


# --------------------------------------------------------------------------- estimation


def frames_read(recording, config):
    """Return how many frames of a recording a pass reads (``config.max_frames``; 0: all)."""
    return min(len(recording), config.max_frames) if config.max_frames else len(recording)


def estimate_recording(estimator, recording, config, progress_stream=None):
    """
    Run an estimator over a recording; keep up to ``max_hands + 1`` hands per frame.

    Frames whose stamp does not increase are skipped (logged).

    :param estimator: object with ``estimate(depth, intrinsics)`` -> list of hands with
        ``keypoints_xyz``, ``scores``, ``detection_score`` (primary first).
    :param recording: iterable of :class:`DepthFrame` with ``len()``.
    :param config: :class:`SelfTrainConfig` (max_frames, max_hands, min_detection_score).
    :return: dict with frame_index (T,), stamps_ns (T,), keypoints (T, K, 21, 3) NaN where
        no hand, scores (T, K, 21).
    """
    from hand_pose_ros.core.progress import ProgressBar

    total = frames_read(recording, config)
    slots = config.max_hands + 1
    progress = ProgressBar(max(total, 1), progress_stream)
    rows = {key: [] for key in _ESTIMATE_KEYS}
    last_stamp, skipped = None, 0
    start = time.monotonic()
    for index, frame in enumerate(recording):
        if index >= total:
            break
        if last_stamp is not None and frame.stamp_ns <= last_stamp:
            skipped += 1
            continue
        last_stamp = frame.stamp_ns
        hands = [h for h in estimator.estimate(frame.depth, frame.intrinsics)
                 if h.detection_score >= config.min_detection_score][:slots]
        keypoints = np.full((slots, NUM_JOINTS, 3), np.nan)
        scores = np.zeros((slots, NUM_JOINTS))
        for k, hand in enumerate(hands):
            keypoints[k] = hand.keypoints_xyz
            scores[k] = hand.scores
        for key, value in zip(_ESTIMATE_KEYS, (index, frame.stamp_ns, keypoints, scores)):
            rows[key].append(value)
        rate = (index + 1) / max(time.monotonic() - start, 1e-9)
        progress.update(index + 1, f'estimating {rate:.1f} frames/s')
    progress.update(total, 'estimated', force=True)
    if skipped:
        LOGGER.warning('%d frames with non-increasing stamps skipped', skipped)
    return {'frame_index': np.asarray(rows['frame_index'], dtype=np.int64),
            'stamps_ns': np.asarray(rows['stamps_ns'], dtype=np.int64),
            'keypoints': np.asarray(rows['keypoints'], dtype=np.float64).reshape(
                -1, slots, NUM_JOINTS, 3),
            'scores': np.asarray(rows['scores'], dtype=np.float64).reshape(
                -1, slots, NUM_JOINTS)}


def in_start_domain(index, share):
    """Return whether synthetic chunk ``index`` is rendered in the start domain (``share``)."""
    return math.floor((index + 1) * share) > math.floor(index * share)


def holdout_mask(count, holdout_fraction, blocks):
    """
    Return which frames of a recording are held out for model selection.

    ``round(count * holdout_fraction)`` frames (at least one when there are two or more)
    in ``blocks`` contiguous blocks, one at the end of each of ``blocks`` equal stretches of
    the recording (one block: the last frames). A recording too short for blocks of
    ``MIN_HOLDOUT_BLOCK_FRAMES`` gets fewer, and at least one (shorter when the held-out
    frames are fewer than that). At fractions near 1, a block longer than its stretch is
    cut to it.

    :param count: frames of the recording.
    :param holdout_fraction: share held out, in (0, 1).
    :param blocks: most blocks (>= 1).
    :return: (count,) bool, True: held out.
    """
    held_out = np.zeros(count, bool)
    frames = max(1, int(round(count * holdout_fraction))) if count > 1 else 0
    blocks = max(1, min(blocks, frames // MIN_HOLDOUT_BLOCK_FRAMES))
    for block in range(blocks if frames else 0):
        stop = (block + 1) * count // blocks
        length = (block + 1) * frames // blocks - block * frames // blocks
        held_out[max(stop - length, block * count // blocks):stop] = True
    return held_out


def _runs(values):
    """Return the (start, stop) of each run of equal consecutive values of a (T,) array."""
    values = np.asarray(values)
    edges = [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist(), len(values)]
    return [(start, stop) for start, stop in zip(edges[:-1], edges[1:]) if stop > start]


def holdout_spans(held_out):
    """Return the held-out blocks of a :func:`holdout_mask` as [start, stop) lists."""
    return [[start, stop] for start, stop in _runs(held_out) if held_out[start]]


def evaluate_parts(estimates, config):
    """
    Filter a round's estimates (pseudo-label and held-out parts apart) and measure both.

    :param estimates: dict of :func:`estimate_recording` (T frames).
    :param config: :class:`SelfTrainConfig`.
    :return: (:class:`Selection` of the T frames, held-out mask (T,) bool, metrics of both
        parts: ``{'train': ..., 'holdout': ...}``).
    """
    held_out = holdout_mask(len(estimates['stamps_ns']), config.holdout_fraction,
                            config.holdout_blocks)
    selection = select_pseudo_labels(estimates['stamps_ns'] * 1e-9, estimates['keypoints'],
                                     estimates['scores'], config, parts=held_out)
    return selection, held_out, {'train': consistency_metrics(selection, ~held_out),
                                 'holdout': consistency_metrics(selection, held_out)}


# --------------------------------------------------------------------------- fine-tuning data


def write_pseudo_chunks(recording, frame_index, labels_xyz, joint_mask, context_spec,
                        directory, chunk_size, prefix='chunk_a_pseudo'):
    """
    Crop the pseudo-labelled frames around their labels and write trainer pool chunks.

    Each crop is centred on the mean of all its label's joints, masked ones included (the
    hand's centre, as the localiser finds it), whatever joints the mask drops.

    :param recording: the recording (iterated once).
    :param frame_index: (N,) recording indices of the pseudo-labelled frames.
    :param labels_xyz: (N, 21, 3) pseudo-labels, metres.
    :param joint_mask: (N, 21) bool, the joints that are labels (see
        :func:`confident_joints`).
    :param context_spec: context :class:`CropSpec` of the trainer.
    :param directory: trainer pool folder.
    :return: number of crops written.
    """
    from hand_pose_ros.core.training import crop_labelled, save_chunk

    wanted = {int(i): n for n, i in enumerate(frame_index)}
    size = context_spec.input_size
    patches, joints, masks, written, part = [], [], [], 0, 0

    def flush():
        nonlocal patches, joints, masks, part
        if patches:
            save_chunk(directory, f'{prefix}_{part:05d}.npz', {
                'patches': np.asarray(patches, np.float16).reshape(-1, size, size),
                'joints': np.asarray(joints, np.float32), 'mask': np.asarray(masks, bool)})
            part += 1
        patches, joints, masks = [], [], []

    last = max(wanted) if wanted else -1
    for index, frame in enumerate(recording):
        if index > last:
            break
        if index not in wanted:
            continue
        label, mask = labels_xyz[wanted[index]], joint_mask[wanted[index]]
        try:
            result, norm = crop_labelled(depth_to_metres(frame.depth), frame.intrinsics, label,
                                         mask, context_spec, center_xyz=label.mean(axis=0))
        except ValueError:
            continue  # label centre outside the image
        patches.append(result.patch)
        joints.append(norm)
        masks.append(mask)
        written += 1
        if len(patches) == chunk_size:
            flush()
    flush()
    return written


# --------------------------------------------------------------------------- the loop


def _atomic_json(path, values):
    write_atomic(path, json.dumps(values, indent=2, default=_json_default).encode('utf-8'))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def save_adapted_card(model, directory, name, start_card, extra):
    """
    Write a fine-tuned network as a model card that keeps its start model's settings.

    The crop, localiser, test-time views and hand score carry over, and so does the
    learned hand finder (its ONNX file is copied beside the new card): fine-tuning
    changes the pose network only, and without the finder the adapted model would
    find fewer hands than the one it started from. The hand score was fitted on the
    start network's confidences; refit it where labelled frames exist
    (``hand_pose_evaluate --fit-hand-score``).

    :param model: the fine-tuned network (a model of the start card's kind).
    :param directory: output folder.
    :param name: model name (file stem).
    :param start_card: path of the start model's card.
    :param extra: more card sections (e.g. ``{'selftrain': ...}``).
    :return: path of the new card.
    """
    from hand_pose_ros.core import model_io
    from hand_pose_ros.core.finder_training import copy_finder

    start = model_io.read_card(start_card, verify=True)
    kept = {key: start[key] for key in ('crop', 'localizer', 'inference', 'hand_score',
                                        'training') if key in start}
    card_path = model_io.save_model(model, directory, name, extra={**kept, **extra})
    if 'finder' in start:
        copy_finder(start_card, card_path)
    return card_path


def default_estimator_factory(config):
    """Return ``card_path -> HandPoseEstimator`` with the config's backend, hands and views."""
    from hand_pose_ros.core.estimator import load_estimator

    def factory(card_path):
        options = {'device': config.device}
        if config.num_threads:
            options['threads'] = config.num_threads
        return load_estimator(str(card_path), backend=config.backend,
                              max_hands=config.max_hands + 1, views=config.label_views,
                              **options)
    return factory


class SelfTrainer:
    """
    One self-training run (see the module docstring); resumable from its output folder.

    :param recording: iterable (several times) of :class:`DepthFrame` with ``len()``.
    :param model: path of the starting model card.
    :param output_dir: run folder.
    :param config: :class:`SelfTrainConfig`.
    :param estimator_factory: ``card_path -> estimator``; default
        :func:`default_estimator_factory`.
    :param resume: continue the run in ``output_dir`` (its settings must match).
    :param progress_stream: where progress goes (default stderr).
    """

    def __init__(self, recording, model, output_dir, config=None, estimator_factory=None,
                 resume=False, progress_stream=None):
        from hand_pose_ros.core.estimator import resolve_card
        from hand_pose_ros.core.model_io import card_input_names, read_card

        self.recording = recording
        self.config = config if config is not None else SelfTrainConfig()
        self.start_card = Path(resolve_card(model)).resolve()
        self.start_card_values = read_card(self.start_card, verify=True)
        inputs = card_input_names(self.start_card_values)
        if inputs != ('depth',):
            raise ValueError(f'{self.start_card}: self-training adapts depth-only networks '
                             f'(recordings hold depth images); this one takes '
                             f'{sorted(inputs)}')
        self.output_dir = Path(output_dir).resolve()
        self.factory = estimator_factory or default_estimator_factory(self.config)
        self.stream = progress_stream or sys.stderr
        state_path = self.output_dir / STATE_FILE
        identity = {'config': json.loads(json.dumps(self.config.to_dict())),
                    'start_model': str(self.start_card),
                    # The same path may hold another model after an update: its checksums.
                    'start_model_files': {name: record['sha256'] for name, record in
                                          self.start_card_values['files'].items()},
                    'recording': getattr(recording, 'description', type(recording).__name__),
                    'frames': len(recording)}
        if state_path.is_file():
            if not resume:
                raise ValueError(f'{self.output_dir} holds a self-training run; pass '
                                 f'resume=True (--resume) or choose another folder')
            self.state = json.loads(state_path.read_text(encoding='utf-8'))
            self.state['config'] = {**_SETTINGS_OF_OLDER_RUNS, **self.state['config']}
            # Runs made before the start model's checksums were recorded.
            self.state.setdefault('start_model_files', identity['start_model_files'])
            self._change_stopping(identity['config'])
            self.state['config'].update(
                {key: identity['config'][key] for key in _EXECUTION_SETTINGS})
            for key, value in identity.items():
                stored = self.state.get(key)
                if stored == value:
                    continue
                if key == 'config':  # name the settings that differ, not all of them
                    changed = sorted(k for k in {*stored, *value}
                                     if stored.get(k) != value.get(k))
                    stored, value = ({k: d.get(k) for k in changed} for d in (stored, value))
                raise ValueError(f'cannot resume {self.output_dir}: its {key} {stored!r} '
                                 f'differs from {value!r}')
            self._say(f'resuming {self.output_dir} after {len(self.state["rounds"])} '
                      f'evaluated round(s)')
        else:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.state = dict(identity, rounds=[], stopped=None, best=None, final_card=None)
            self._save_state()

    # ----- helpers

    def _change_stopping(self, config):
        """
        Let a resumed run change when it stops: its iterations and its min_improvement.

        A run stopped by the old rule goes on when the new one lets its last round pass (more
        iterations; a lower gain needed); the rounds done stay.
        """
        stored = self.state['config']
        changes = {key: (stored.get(key), config[key]) for key in _STOPPING_SETTINGS
                   if stored.get(key) != config[key]}
        if not changes:
            return
        stored.update({key: new for key, (_, new) in changes.items()})
        stopped, rounds = self.state['stopped'] or '', self.state['rounds']
        gain_passes = len(rounds) < 2 or (rounds[-1]['train']['pass_rate']
                                          - rounds[-2]['train']['pass_rate']
                                          >= config['min_improvement'])
        by_a_rule = stopped.endswith(_STOPPED_BY_COUNT) or stopped.startswith(_STOPPED_BY_GAIN)
        if by_a_rule and gain_passes and len(rounds) - 1 < config['iterations']:
            self.state.update(stopped=None, best=None, final_card=None)
        self._say(', '.join(f'{key} {old} -> {new}' for key, (old, new) in changes.items()))

    def _say(self, text):
        self.stream.write(f'[selftrain] {text}\n')
        self.stream.flush()
        LOGGER.info(text)

    def _save_state(self):
        _atomic_json(self.output_dir / STATE_FILE, self.state)

    def _round_dir(self, index):
        path = self.output_dir / f'iter_{index:02d}'
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _card_of(self, index):
        if index == 0:
            return self.start_card
        return self.output_dir / self.state['rounds'][index]['card']

    # ----- stages

    def _estimates(self, index, card):
        path = self._round_dir(index) / 'estimates.npz'
        if path.is_file():
            with np.load(path) as stored:
                return {key: stored[key] for key in _ESTIMATE_KEYS}
        self._say(f'round {index}: estimating {frames_read(self.recording, self.config)} '
                  f'frames with {card.name}')
        estimates = estimate_recording(self.factory(card), self.recording, self.config,
                                       self.stream)
        with atomic_file(path) as stream:
            np.savez(stream, **estimates)
        return estimates

    def _evaluate_round(self, index, card, training=None):
        started = time.monotonic()
        estimates = self._estimates(index, card)
        selection, held_out, parts = evaluate_parts(estimates, self.config)
        kept = np.flatnonzero((selection.status == KEPT) & ~held_out)
        round_dir = self._round_dir(index)
        np.savez(round_dir / 'pseudo_labels.npz', frame_index=estimates['frame_index'][kept],
                 stamps_ns=estimates['stamps_ns'][kept], keypoints_xyz=selection.labels[kept],
                 joint_mask=confident_joints(selection.scores[kept],
                                             self.config.joint_score_quantile))
        spans = holdout_spans(held_out)
        record = {'round': index, 'card': os.path.relpath(card, self.output_dir)
                  if index else str(card), 'frames_seen': int(len(estimates['stamps_ns'])),
                  'holdout_spans': spans, 'train': parts['train'],
                  'holdout': parts['holdout'], 'criterion': parts['holdout']['criterion'],
                  'training': training, 'elapsed_s': round(time.monotonic() - started, 1)}
        _atomic_json(round_dir / 'report.json', record)
        (round_dir / 'report.md').write_text(format_rounds([record]), encoding='utf-8')
        plot_timeline(selection.status, selection.scores.mean(axis=1), spans,
                      round_dir / 'timeline.png', f'round {index}: {card.name}')
        self._say(f'round {index}: pass rate {parts["train"]["pass_rate"]:.1%} '
                  f'(held-out {parts["holdout"]["pass_rate"]:.1%}), detections '
                  f'{parts["train"]["detection_rate"]:.1%}, residual '
                  f'{parts["holdout"]["residual_mm"]:.1f} mm, criterion '
                  f'{record["criterion"]:.3f}')
        return record

    def _start_data(self):
        """Return the synthetic ``data`` dict the start model was trained on."""
        training = self.start_card_values.get('training') or {}
        return dict(training.get('data') or {'type': 'synthetic', 'camera': 'sr300'})

    def _synthetic_data(self):
        """Return the synthetic ``data`` dict of the fine-tuning crops (fitted or start)."""
        return self.domain()['data'] if self.config.fit_domain else self._start_data()

    def _chunk_data(self, index):
        """Return the ``data`` dict of synthetic chunk ``index`` (start_domain_fraction mix)."""
        share = self.config.start_domain_fraction if self.config.fit_domain else 1.0
        return self._start_data() if in_start_domain(index, share) else self._synthetic_data()

    def domain(self):
        """Return the synthetic domain fitted to the recording: fitted once, then read back."""
        from hand_pose_ros.core import domain_fit

        path = self.output_dir / 'domain.json'
        if path.is_file():
            return json.loads(path.read_text(encoding='utf-8'))
        base = self._start_data()
        estimates = self._estimates(0, self.start_card)
        train = np.flatnonzero(~holdout_mask(len(estimates['stamps_ns']),
                                             self.config.holdout_fraction,
                                             self.config.holdout_blocks))
        keypoints = estimates['keypoints'][train, 0]
        centers = keypoints.mean(axis=1)
        found = np.flatnonzero(np.all(np.isfinite(centers), axis=1))
        if len(found) == 0:
            raise ValueError('round 0 found no hand in the recording: nothing to fit the '
                             'synthetic domain to (fit_domain=False trains on the start '
                             "model's own domain)")
        chosen = found[np.unique(np.linspace(0, len(found) - 1, min(
            len(found), self.config.domain_fit_frames)).round().astype(np.int64))]
        wanted = dict(zip(estimates['frame_index'][train[chosen]].tolist(), keypoints[chosen]))
        frames, joints = [], []
        for index, frame in enumerate(self.recording):
            if index in wanted:
                frames.append(frame)
                joints.append(wanted[index])
                if len(frames) == len(wanted):
                    break
        estimator = self.factory(self.start_card)

        def estimate(depth_mm, intrinsics, center):
            hands = estimator.estimate(depth_mm, intrinsics, centers=center[None])
            return hands[0].keypoints_xyz if hands else np.full((NUM_JOINTS, 3), np.nan)

        self._say(f'fitting the synthetic domain to {len(frames)} frames of the recording')
        joints = np.array(joints)
        fit = domain_fit.fit_domain(
            frames, joints.mean(axis=1), base, self._context_spec(),
            crops=self.config.domain_fit_crops, seed=self.config.seed, progress=self._say,
            keypoints=joints, estimate=estimate)
        _atomic_json(path, fit.to_dict())
        self._say(f'fitted domain: {fit.fitted}')
        return fit.to_dict()

    def _synthetic_chunks(self, directory, round_index, count, context_spec):
        """
        Return paths of round ``round_index``'s ``count`` synthetic chunks in ``directory``.

        Each chunk is rendered once, from a seed of (``seed``, round, chunk), so each round
        trains on crops of its own and an interrupted pool build renders only the missing.
        """
        from hand_pose_ros.core.training import make_source, render_chunk, save_chunk

        directory.mkdir(exist_ok=True)
        paths = []
        for index in range(count):
            name = f'chunk_b_synth_r{round_index:02d}_{index:05d}.npz'
            if not (directory / name).is_file():
                seed = np.random.SeedSequence([self.config.seed, round_index, index])
                source = make_source(self._chunk_data(index), context_spec,
                                     int(seed.generate_state(1)[0]))
                save_chunk(str(directory), name, render_chunk(source, self.config.chunk_size))
            paths.append(directory / name)
        return paths

    def _train_config(self, seed, run_dir, pool_size, start_card):
        from hand_pose_ros.core.training import TrainConfig

        card = self.start_card_values
        training = card.get('training') or {}
        config = self.config
        return TrainConfig(
            output_dir=str(run_dir), model=card['network'], model_cfg=dict(card['config']),
            crop=dict(card['crop']), context=float(training.get('context', 1.5)),
            augment=dict(training.get('augment') or {}), data=self._synthetic_data(),
            eval_frames=0, pool_size=pool_size, min_pool=1, render_workers=0,
            chunk_size=config.chunk_size, steps=config.steps, batch_size=config.batch_size,
            lr=config.lr, lr_schedule='cosine',
            warmup_steps=min(config.warmup_steps, config.steps - 1),
            seed=seed, checkpoint_every=min(config.checkpoint_every, config.steps),
            log_every=max(1, min(10, config.steps)), device=config.device,
            num_threads=config.num_threads, init_from=str(start_card),
            freeze_batchnorm=config.freeze_batchnorm)

    def _context_spec(self):
        from hand_pose_ros.core import augment
        from hand_pose_ros.core.crop import CropSpec

        card = self.start_card_values
        spec = CropSpec.from_dict({k: tuple(v) if isinstance(v, list) else v
                                   for k, v in card['crop'].items()})
        return augment.context_spec(spec, float((card.get('training') or {}).get(
            'context', 1.5)))

    def _build_pool(self, directory, round_index, frame_index, labels, joint_mask,
                    synthetic_crops=None):
        """
        Fill a round's trainer pool folder with pseudo-labelled and synthetic crops (once).

        The synthetic crops are rendered into ``directory/synthetic`` first (an interrupted
        build keeps those already rendered), then moved into the pool, and that folder
        goes: the trainer (and its resumption) reads the pool only.

        :param directory: the round's folder (``train/pool`` is the trainer's pool).
        :param round_index: round number (seeds the round's synthetic crops).
        :param frame_index: (N,) recording indices of the pseudo-labelled frames.
        :param labels: (N, 21, 3) pseudo-labels, metres.
        :param joint_mask: (N, 21) bool, the joints of ``labels`` that are labels.
        :param synthetic_crops: synthetic crop count; default: ``synthetic_fraction`` of
            the pool.
        """
        config = self.config
        pool_dir = directory / 'train' / 'pool'
        info_path = directory / 'pool_info.json'
        synthetic_dir = directory / 'synthetic'
        if not info_path.is_file():
            if pool_dir.exists():
                shutil.rmtree(pool_dir)  # an interrupted pool build
            pool_dir.mkdir(parents=True)
            context = self._context_spec()
            pseudo = write_pseudo_chunks(self.recording, frame_index, labels, joint_mask,
                                         context, str(pool_dir), config.chunk_size)
            if synthetic_crops is None:
                ratio = config.synthetic_fraction / (1.0 - config.synthetic_fraction)
                synthetic_crops = pseudo * ratio
            synthetic_chunks = math.ceil(synthetic_crops / config.chunk_size)
            for path in self._synthetic_chunks(synthetic_dir, round_index, synthetic_chunks,
                                               context):
                os.replace(path, pool_dir / path.name)
                # The trainer loads chunks oldest first: a chunk rendered before an
                # interruption must still come after the pseudo-labels written since.
                os.utime(pool_dir / path.name)
            files = len(list(pool_dir.glob('*.npz')))
            _atomic_json(info_path, {'pseudo_crops': pseudo,
                                     'synthetic_crops': synthetic_chunks * config.chunk_size,
                                     'pool_size': files * config.chunk_size})
        shutil.rmtree(synthetic_dir, ignore_errors=True)
        return json.loads(info_path.read_text(encoding='utf-8'))

    def _train(self, directory, start_card, pool, seed, name, info):
        """Fine-tune ``start_card`` on the pool in ``directory``; return the new card."""
        from hand_pose_ros.core.training import CHECKPOINT_LAST, Trainer

        run_dir = directory / 'train'
        resume = (run_dir / CHECKPOINT_LAST).is_file()
        trainer = Trainer(self._train_config(seed, run_dir, pool['pool_size'], start_card),
                          resume=resume, progress_stream=self.stream)
        self._say(f'{name}: fine-tuning {self.config.steps} steps on {pool["pseudo_crops"]} '
                  f'pseudo-labelled + {pool["synthetic_crops"]} synthetic crops')
        trainer.train()
        training = {'start_model': os.path.basename(str(start_card)), **info, **pool,
                    'steps': self.config.steps, 'lr': self.config.lr,
                    'batch_size': self.config.batch_size, 'seed': seed}
        card_path = save_adapted_card(trainer.model.cpu().eval(), directory, name,
                                      self.start_card, {'selftrain': training})
        if self.config.backend != 'torch':
            from hand_pose_ros.core import export

            export.export_card(card_path)
        return card_path, training

    def _fine_tune(self, index):
        """Fine-tune the model of round ``index - 1``; return (card path, training info)."""
        with np.load(self._round_dir(index - 1) / 'pseudo_labels.npz') as stored:
            frame_index, labels = stored['frame_index'], stored['keypoints_xyz']
            # Pseudo-labels of a run made before joint masks label every joint.
            mask = stored['joint_mask'] if 'joint_mask' in stored.files \
                else np.ones(labels.shape[:2], bool)
        round_dir = self._round_dir(index)
        self._say(f'round {index}: cropping {len(frame_index)} pseudo-labelled frames, '
                  f'adding synthetic crops of {self._synthetic_data()}'
                  + (f' ({self.config.start_domain_fraction:.0%} in the start domain)'
                     if self.config.fit_domain else ''))
        pool = self._build_pool(round_dir, index, frame_index, labels, mask)
        return self._train(round_dir, self._card_of(index - 1), pool, self.config.seed + index,
                           f'iter_{index:02d}', {'pseudo_labels': int(len(frame_index)),
                                                 'masked_joints': int((~mask).sum())})

    def control_run(self, rounds, crops):
        """
        Fine-tune the start model on synthetic crops only, as long as ``rounds`` rounds.

        The ablation that separates adaptation from plain extra training: same steps, same
        schedule per round, a pool of ``crops`` synthetic crops, no pseudo-labels. Control
        round ``r`` renders its own synthetic crops from the seeds of adaptation round
        ``r``: its first chunks are those of that round. Resumable; returns the control
        model card.
        """
        directory = self.output_dir / 'control'
        card = self.start_card
        for index in range(1, rounds + 1):
            round_dir = directory / f'iter_{index:02d}'
            round_dir.mkdir(parents=True, exist_ok=True)
            # Written once the card has every file (finder, exports), which come after it.
            done = round_dir / 'done.json'
            if not done.is_file():
                pool = self._build_pool(round_dir, index, np.zeros(0, np.int64),
                                        np.zeros((0, NUM_JOINTS, 3)),
                                        np.zeros((0, NUM_JOINTS), bool), crops)
                _, training = self._train(round_dir, card, pool, self.config.seed + index,
                                          f'control_{index:02d}', {'pseudo_labels': 0})
                _atomic_json(done, training)
            card = round_dir / f'control_{index:02d}.yaml'
        return card

    # ----- public

    def run(self, stop_after=None):
        """
        Run (or continue) the loop; return the path of the adapted model card.

        :param stop_after: stop once this many fine-tuning rounds are done, leaving the
            run resumable (returns None); for tests and time-boxed runs.
        """
        config = self.config
        rounds = self.state['rounds']
        if not rounds:
            rounds.append(self._evaluate_round(0, self.start_card))
            self._save_state()
        while self.state['stopped'] is None:
            index = len(rounds)
            if index > config.iterations:
                self.state['stopped'] = f'{config.iterations}{_STOPPED_BY_COUNT}'
                break
            if stop_after is not None and index > stop_after:
                self._say(f'stopping after round {index - 1} as asked; resume to continue')
                return None
            labels = rounds[-1]['train']['kept']
            if labels < config.min_pseudo_labels:
                self.state['stopped'] = (f'round {index - 1} gave {labels} pseudo-labels '
                                         f'(< {config.min_pseudo_labels})')
                break
            card_path, training = self._fine_tune(index)
            rounds.append(self._evaluate_round(index, Path(card_path), training))
            gain = rounds[-1]['train']['pass_rate'] - rounds[-2]['train']['pass_rate']
            if gain < config.min_improvement:
                self.state['stopped'] = f'{_STOPPED_BY_GAIN} in round {index} ({gain:+.1%})'
            self._save_state()
        self._say(f'stopped: {self.state["stopped"]}')
        self._save_state()
        return self._finish()

    def _finish(self):
        from hand_pose_ros.core import export, model_io

        rounds = self.state['rounds']
        best = max(range(len(rounds)), key=lambda i: (rounds[i]['criterion'], -i))
        self.state['best'] = best
        model, _ = model_io.load_model(self._card_of(best), device='cpu')
        info = {'best_round': best, 'stopped': self.state['stopped'],
                'recording': self.state['recording'], 'start_model': str(self.start_card),
                'criterion': 'held-out pass rate - residual_mm / 100',
                'rounds': [{'round': r['round'], 'train_pass_rate': r['train']['pass_rate'],
                            'holdout_pass_rate': r['holdout']['pass_rate'],
                            'holdout_residual_mm': r['holdout']['residual_mm'],
                            'criterion': r['criterion']} for r in rounds],
                'config': self.config.to_dict()}
        if (self.output_dir / 'domain.json').is_file():
            info['synthetic_domain'] = self.domain()['fitted']
        card_path = save_adapted_card(model, self.output_dir, self.config.name, self.start_card,
                                      {'selftrain': info})
        if self.config.export_onnx:
            # Adapted from a card with an INT8 copy: the adapted model gets its own, so that
            # ONNX Runtime on the CPU runs it as fast as the model it replaces.
            export.export_card(card_path, int8='onnx_int8' in self.start_card_values)
        self.state['final_card'] = os.path.relpath(card_path, self.output_dir)
        self._save_state()
        _atomic_json(self.output_dir / 'report.json', dict(info, details=rounds))
        (self.output_dir / 'report.md').write_text(
            f'# Self-training report: {self.config.name}\n\n'
            f'Start model: `{self.start_card}`; recording: {self.state["recording"]}.\n'
            f'Stopped: {self.state["stopped"]}. Kept: round {best} (best label-free '
            f'criterion on the held-out part).\n\n' + format_rounds(rounds), encoding='utf-8')
        plot_rounds(rounds, self.output_dir / 'progress.png')
        self._say(f'adapted model: {card_path} (round {best})')
        return card_path


# --------------------------------------------------------------------------- reports


def format_rounds(rounds):
    """Return a Markdown table of round records."""
    lines = ['| round | frames | detections | pass rate | held-out pass | residual mm | '
             'accel mm/f² | bone CV | pseudo-labels used | criterion |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for record in rounds:
        train, holdout = record['train'], record['holdout']
        used = (record.get('training') or {}).get('pseudo_crops', '–')
        lines.append(
            f'| {record["round"]} | {record["frames_seen"]} | '
            f'{train["detection_rate"]:.1%} | {train["pass_rate"]:.1%} | '
            f'{holdout["pass_rate"]:.1%} | {holdout["residual_mm"]:.1f} | '
            f'{holdout["accel_mm"]:.1f} | {holdout["bone_cv"]:.3f} | {used} | '
            f'{record["criterion"]:.3f} |')
    return '\n'.join(lines) + '\n'


def plot_timeline(status, mean_scores, spans, path, title, width=1000, height=260):
    """
    Draw per-frame filter status (colour band) and mean joint score into a PNG.

    :param status: (T,) status codes (``STATUS_NAMES``).
    :param mean_scores: (T,) mean joint confidence per frame.
    :param spans: held-out blocks, [start, stop) frame positions (:func:`holdout_spans`):
        shaded, and marked above the band.
    :param path: output PNG.
    :param title: text at the top.
    """
    from PIL import Image, ImageDraw

    image = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(image)
    left, right, band_top, band_bottom = 60, width - 20, 30, 80
    draw.text((left, 8), title, fill='black')
    count = max(len(status), 1)

    def x_of(t):
        return left + (right - left) * t / count

    top, bottom = 100, height - 50
    for start, stop in spans:
        draw.rectangle([x_of(start), top, x_of(stop), bottom], fill=HOLDOUT_SHADE)
        draw.rectangle([x_of(start), band_top - 8, x_of(stop), band_top - 4], fill='black')
    for t, code in enumerate(status):
        draw.rectangle([x_of(t), band_top, max(x_of(t + 1) - 1, x_of(t)), band_bottom],
                       fill=STATUS_COLOURS[int(code)])
    draw.rectangle([left, top, right, bottom], outline='black')
    draw.text((5, top - 6), '1.0', fill='black')
    draw.text((5, bottom - 6), '0.0', fill='black')
    draw.text((left, bottom + 4), 'mean joint score per frame', fill='black')
    points = [(x_of(t + 0.5), bottom - (bottom - top) * float(np.clip(s, 0, 1)))
              for t, s in enumerate(mean_scores)]
    if len(points) > 1:
        draw.line(points, fill=(80, 80, 80), width=1)
    x = left
    for name, colour in zip(STATUS_NAMES + ('held-out',), STATUS_COLOURS + (HOLDOUT_SHADE,)):
        draw.rectangle([x, height - 22, x + 12, height - 10], fill=colour)
        draw.text((x + 16, height - 24), name, fill='black')
        x += 30 + 7 * len(name)
    image.save(path)


def plot_rounds(rounds, path, width=900, height=300):
    """Draw pass rates (train, held-out) and the residual per round into a PNG."""
    from PIL import Image, ImageDraw

    panels = [('pass rate (green: pseudo-label part, blue: held-out)',
               [[r['train']['pass_rate'] for r in rounds],
                [r['holdout']['pass_rate'] for r in rounds]]),
              ('held-out smoothing residual (mm)',
               [[r['holdout']['residual_mm'] for r in rounds]])]
    colours = ((44, 160, 44), (31, 119, 180))
    image = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(image)
    panel_width = width // len(panels)
    for p, (title, series) in enumerate(panels):
        left, right = p * panel_width + 60, (p + 1) * panel_width - 20
        top, bottom = 30, height - 40
        draw.text((left - 50, 8), title, fill='black')
        draw.rectangle([left, top, right, bottom], outline='black')
        values = [v for line in series for v in line if math.isfinite(v)]
        if not values:
            continue
        low, high = min(values + [0.0]), max(values)
        high = high if high > low else low + 1.0
        for frac in (0.0, 1.0):
            draw.text((left - 45, bottom - frac * (bottom - top) - 6),
                      f'{low + frac * (high - low):.3g}', fill='black')
        span = max(len(rounds) - 1, 1)
        for line, colour in zip(series, colours):
            points = [(left + (right - left) * i / span,
                       bottom - (bottom - top) * (v - low) / (high - low))
                      for i, v in enumerate(line) if math.isfinite(v)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        for i in range(len(rounds)):
            draw.text((left + (right - left) * i / span - 3, bottom + 6), str(i), fill='black')
    image.save(path)


# --------------------------------------------------------------------------- domain shift


@dataclass(frozen=True)
class DomainShift:
    """
    A synthetic deployment domain that differs from the training one like real ones do.

    :param camera: camera preset.
    :param finger_radius_scale: glove: finger and palm surface radii factor.
    :param palm_thickness_scale: glove: palm thickness factor.
    :param tool_radius_m: radius of a cylindrical tool handle held against the palm (0: none).
    :param tool_half_length_m: half length of the handle.
    :param sensor: :class:`SensorConfig` fields of the depth camera.
    """

    camera: str = 'sr300'
    finger_radius_scale: float = 1.0
    palm_thickness_scale: float = 1.0
    tool_radius_m: float = 0.0
    tool_half_length_m: float = 0.07
    sensor: dict = field(default_factory=dict)

    @classmethod
    def gloved_tool(cls):
        """Return domain B: gloves, a held tool, a noisier sensor, another camera."""
        return cls(camera='icvl', finger_radius_scale=1.4, palm_thickness_scale=1.25,
                   tool_radius_m=0.016, tool_half_length_m=0.07,
                   sensor={'noise_sigma_z2': 0.004, 'disparity_subpixel': 0.12,
                           'baseline_m': -0.05, 'edge_dropout_prob': 0.6,
                           'flying_pixel_prob': 0.3, 'holes_per_megapixel': 60.0,
                           'dropout_prob': 0.01})


def render_sequence(num_frames, seed, shift=None, start_s=0.0, fps=30.0):
    """
    Render a labelled motion sequence in a domain.

    :param num_frames: frames.
    :param seed: motion and scene seed.
    :param shift: :class:`DomainShift` (default: the training domain, plain hands).
    :param start_s: stamp of the first frame.
    :return: list of synthetic :class:`Frame` (``depth_mm``, ``intrinsics``, ``hands``).
    """
    from hand_pose_ros.core.synth import (
        Cylinder, generate_motion, SceneItem, SensorConfig, SyntheticGenerator)
    from hand_pose_ros.core.synth.scene import PART_NAMES

    shift = shift if shift is not None else DomainShift()
    intrinsics = CameraIntrinsics.from_preset(shift.camera)
    motion = generate_motion(num_frames, fps=fps, seed=seed, intrinsics=intrinsics)
    generator = SyntheticGenerator(intrinsics, sensor=SensorConfig(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in shift.sensor.items()}),
        seed=seed)
    background = generator.motion_scene(motion)
    shape = motion.poses[0].shape
    gloved = replace(shape, joint_radii_m=shape.joint_radii_m * shift.finger_radius_scale,
                     palm_thickness_m=shape.palm_thickness_m * shift.palm_thickness_scale)
    frames = []
    for index, pose in enumerate(motion.poses):
        pose = replace(pose, shape=gloved)
        items = tuple(background.items)
        if shift.tool_radius_m > 0:
            palm = pose.keypoints_xyz[[0, 5, 9, 13, 17]].mean(axis=0)
            normal, across = pose.rotation[:, 2], pose.rotation[:, 0]
            center = palm + normal * (shift.tool_radius_m + 0.6 * gloved.palm_thickness_m)
            items += (SceneItem(Cylinder(tuple(center), tuple(across), shift.tool_radius_m,
                                         shift.tool_half_length_m),
                                PART_NAMES.index('object'), (0.8, 0.3, 0.1)),)
        scene = replace(background, hands=(pose,), items=items, seed=background.seed + index,
                        stamp_s=start_s + float(motion.stamps_s[index]))
        frames.append(generator.render(scene))
    return frames


def evaluate_labelled(estimator, frames, config=None, max_center_distance_m=0.1):
    """
    Measure an estimator on labelled frames (the experiment's held-out test part).

    :param estimator: a :class:`HandPoseEstimator`.
    :param frames: synthetic :class:`Frame` list (labels in ``hands[0]``).
    :param config: :class:`SelfTrainConfig` whose spatial checks define a detection.
    :param max_center_distance_m: a returned hand farther than this from the true hand
        centre does not count.
    :return: dict: frames, localized_rate (a hand returned at the true hand),
        detection_rate (such a hand whose pose also passes the spatial checks),
        mean_error_mm / median_error_mm (localised frames, localiser centres),
        mean_error_oracle_mm (every frame, crop at the true centre).
    """
    config = config if config is not None else SelfTrainConfig()
    errors, oracle_errors, localized, detected = [], [], 0, 0
    for frame in frames:
        truth = frame.hands[0].joints_xyz
        center = truth.mean(axis=0)
        hands = estimator.estimate(frame.depth_mm, frame.intrinsics)
        near = [h for h in hands
                if np.linalg.norm(h.keypoints_xyz.mean(axis=0) - center)
                <= max_center_distance_m]
        if near:
            localized += 1
            best = min(near, key=lambda h: np.linalg.norm(h.keypoints_xyz - truth, axis=1)
                       .mean())
            errors.append(np.linalg.norm(best.keypoints_xyz - truth, axis=1).mean() * 1000.0)
            if spatial_problem(best.keypoints_xyz, best.scores, config) == KEPT:
                detected += 1
        oracle = estimator.estimate(frame.depth_mm, frame.intrinsics, centers=center[None])
        oracle_errors.append(np.linalg.norm(oracle[0].keypoints_xyz - truth, axis=1).mean()
                             * 1000.0)
    count = max(len(frames), 1)
    return {'frames': len(frames), 'localized_rate': localized / count,
            'detection_rate': detected / count,
            'mean_error_mm': float(np.mean(errors)) if errors else math.nan,
            'median_error_mm': float(np.median(errors)) if errors else math.nan,
            'mean_error_oracle_mm': float(np.mean(oracle_errors)) if oracle_errors
            else math.nan}
