"""
Accuracy metrics of hand pose estimators and of the hand localiser.

Definitions (reported by ``hand_pose_evaluate``):

- 3D joint error: Euclidean distance between predicted and ground-truth joints, mm, over
  the joints the dataset labels (its layout's canonical mask).
- mean / median error: over all labelled joints of the evaluated (detected) hands;
  per-joint error: mean per canonical joint (NaN where never labelled).
- success-frame curve: fraction of ground-truth hands whose *maximum* joint error is at most
  each threshold (0-80 mm); a missed hand counts as a failure at every threshold.
- detection (``--center detect``): a ground-truth hand is detected when a reported hand's
  centre lies within ``match_radius_m`` (default 50 mm) of its oracle centre (the centroid
  of its labelled joints); hands and ground truth are matched one-to-one, nearest first.
  Reported hands matching no ground truth are false positives.
- localiser centre error: distance from the matched candidate's centre to the oracle centre.
- breakdown (:func:`error_breakdown`): the mean error of the evaluated hands by distance
  from the camera, for hands the image border cuts (a labelled joint projects outside the
  image) and the others, the share of the error the worst tenth of the hands holds, and,
  on frames that say which joints are hidden (synthetic), visible against hidden joints.
- filtered hands (:class:`FilteredEstimator`, ``--filter``): the hands ``hand_filter_node``
  publishes, scored like the estimator's: each with its valid joints and their centroid as
  its centre; joints the filter marks invalid do not count in the errors.
"""

from dataclasses import dataclass
import logging
import math

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz
from hand_pose_ros.core.crop import check_center
from hand_pose_ros.core.filters import HandFilter, Observation
from hand_pose_ros.core.filters.tracking import nearest_pairs
from hand_pose_ros.core.skeleton import JOINT_NAMES, NUM_JOINTS
from hand_pose_ros.core.training import oracle_center

LOGGER = logging.getLogger(__name__)

CENTER_MODES = ('oracle', 'detect')
DEFAULT_THRESHOLDS_MM = np.arange(0.0, 81.0, 1.0)
DEFAULT_MATCH_RADIUS_M = 0.05
SYNTHETIC_SCENES = ('default', 'single_hand', 'hand_only', 'motion')
# Frames per sequence of the 'motion' scenes (5 s at 30 Hz).
MOTION_SEQUENCE_FRAMES = 150
# A hand counts as mostly visible when at least this fraction of its joints is not occluded.
MOSTLY_VISIBLE = 0.5
# Edges of the breakdown's bins: the hand centre's distance (m), the visible joints' share.
DISTANCE_BINS_M = (0.0, 0.4, 0.55, 0.7, math.inf)
VISIBLE_BINS = (0.0, 0.5, 0.7, 0.85, 1.0)
# The breakdown reports the share of the error held by this worst fraction of the hands.
WORST_FRACTION = 0.1


@dataclass
class LabelledFrame:
    """
    A depth frame with the ground truth of every visible hand.

    :param depth_m: (H, W) float32 metres, NaN invalid.
    :param intrinsics: :class:`CameraIntrinsics`.
    :param joints_xyz: (K, 21, 3) metres, canonical order (NaN where unlabelled).
    :param joint_mask: (K, 21) bool, labelled joints.
    :param name: frame identifier.
    :param visible: optional (K, 21) bool, joints not occluded (synthetic frames).
    :param color: optional (H, W, 3) uint8 RGB image registered to the depth (synthetic
        frames rendered for a colour network).
    :param sequence_start: the first frame of a sequence of frames in order (a stream starts
        here: :func:`evaluate_estimator` resets an estimator that has ``reset``, e.g. a
        :class:`~hand_pose_ros.core.estimator.HandTracker`).
    """

    depth_m: np.ndarray
    intrinsics: CameraIntrinsics
    joints_xyz: np.ndarray
    joint_mask: np.ndarray
    name: str = ''
    visible: np.ndarray = None
    color: np.ndarray = None
    sequence_start: bool = False

    def estimate_with(self, estimator, **options):
        """Return ``estimator.estimate`` on this frame (given its colour image if it has one)."""
        if self.color is not None:
            options['color'] = self.color
        return estimator.estimate(self.depth_m, self.intrinsics, **options)

    @classmethod
    def from_sample(cls, sample):
        """Wrap a one-hand :class:`~hand_pose_ros.core.datasets.DepthSample`."""
        return cls(sample.depth_m, sample.intrinsics, np.asarray(sample.joints_xyz)[None],
                   np.asarray(sample.joint_mask, dtype=bool)[None], sample.name)

    @property
    def centers_xyz(self):
        """Return (K, 3) oracle centres (centroids of the labelled joints)."""
        return np.array([oracle_center(j, m) for j, m in zip(self.joints_xyz, self.joint_mask)]
                        ).reshape(-1, 3)


def synthetic_scene_config(name):
    """
    Return the synthetic engine's ``SceneConfig`` for a named test scene type.

    'default': the engine's default scenes (arms, objects, tables, bodies, walls, clutter,
    sometimes a second hand); 'single_hand': the same with exactly one hand; 'hand_only': one
    hand with its forearm and nothing else; 'motion': the default scene configuration,
    whose backgrounds the motion sequences of :func:`motion_frames` are set in.
    """
    from hand_pose_ros.core import synth

    if name not in SYNTHETIC_SCENES:
        raise ValueError(f'unknown synthetic scene {name!r}; choose from {SYNTHETIC_SCENES}')
    if name == 'single_hand':
        return synth.SceneConfig(second_hand_prob=0.0)
    if name == 'hand_only':
        return synth.SceneConfig.hand_only()
    return synth.SceneConfig()


def labelled_frames(dataset, root=None, num_frames=None, seed=1000, camera='sr300',
                    scene='default', reader_options=None, color=False):
    """
    Return an iterable of :class:`LabelledFrame` from a dataset folder or the synthetic engine.

    :param dataset: reader name (see ``hand_pose_ros.core.datasets.READERS``); 'synthetic'
        without ``root`` renders a held-out set on the fly.
    :param root: dataset folder.
    :param num_frames: frames to use (evenly spaced over a dataset); synthetic default 2000.
    :param seed: synthetic seed (held-out sets use >= 1000; training uses smaller seeds).
    :param camera: camera preset of the synthetic set.
    :param scene: synthetic scene type (see :func:`synthetic_scene_config`); 'motion'
        renders continuous sequences (:func:`motion_frames`).
    :param reader_options: keyword arguments of the dataset reader (e.g. ``labels``).
    :param color: the frames carry colour images registered to the depth (for a network
        with a colour input); only the synthetic engine renders them.
    """
    if dataset == 'synthetic' and root is None and scene == 'motion':
        return motion_frames(2000 if num_frames is None else num_frames, seed, camera, color)
    if dataset == 'synthetic' and root is None:
        return synthetic_frames(2000 if num_frames is None else num_frames, seed, camera,
                                scene=synthetic_scene_config(scene), color=color)
    if root is None:
        raise ValueError(f'dataset {dataset!r} needs --root (the folder holding its files)')
    if color:
        raise ValueError(f'a network with a colour input is evaluated on synthetic frames '
                         f'only (the {dataset!r} reader gives no colour registered to the '
                         f'depth)')
    from hand_pose_ros.core.datasets import open_dataset

    reader = open_dataset(dataset, root, **(reader_options or {}))
    count = len(reader)
    if num_frames is None or num_frames >= count:
        indices = range(count)
    else:
        indices = np.unique(np.linspace(0, count - 1, num_frames).round().astype(int))
    return (LabelledFrame.from_sample(sample) for sample in reader.readable(indices))


def synthetic_frames(num_frames, seed, camera='sr300', scene=None, sensor=None, color=False):
    """
    Yield rendered synthetic :class:`LabelledFrame` (full images, every hand labelled).

    :param num_frames: frames to render.
    :param seed: generator seed.
    :param camera: camera preset.
    :param scene: ``synth.SceneConfig`` (None: the engine's default scenes, with noise,
        arms, objects, tables, bodies, walls, clutter and sometimes a second hand).
    :param sensor: ``synth.SensorConfig`` (None: the engine's default sensor model).
    :param color: render the colour image too (``LabelledFrame.color``).
    """
    from hand_pose_ros.core import synth

    intrinsics = CameraIntrinsics.from_preset(camera)
    options = {key: value for key, value in (('scene', scene), ('sensor', sensor))
               if value is not None}
    generator = synth.SyntheticGenerator(intrinsics, seed=seed, **options)
    for index in range(num_frames):
        frame = generator.sample_frame(color=color)
        joints = np.stack([hand.joints_xyz for hand in frame.hands]).reshape(-1, NUM_JOINTS, 3)
        visible = np.stack([hand.visible for hand in frame.hands]).reshape(-1, NUM_JOINTS)
        yield LabelledFrame(frame.depth_m, intrinsics, joints,
                            np.ones(joints.shape[:2], dtype=bool), f'synthetic-{seed}-{index}',
                            visible.astype(bool), frame.color)


def motion_frames(num_frames, seed, camera='sr300', color=False):
    """
    Yield labelled frames of one hand moving, as a camera streams them (30 Hz, in order).

    Each run of :data:`MOTION_SEQUENCE_FRAMES` frames is one motion sequence (seeds
    ``seed``, ``seed + 1``, ...): a new hand, motion and background, with the hand sometimes
    leaving the image. What a hand tracker (``--redetect-interval``) is measured on.
    ``color`` renders the colour images too.
    """
    from hand_pose_ros.core import synth

    intrinsics = CameraIntrinsics.from_preset(camera)
    for sequence, start in enumerate(range(0, num_frames, MOTION_SEQUENCE_FRAMES)):
        count = min(MOTION_SEQUENCE_FRAMES, num_frames - start)
        motion = synth.generate_motion(count, seed=seed + sequence, intrinsics=intrinsics)
        generator = synth.SyntheticGenerator(intrinsics, seed=seed + sequence)
        for index, frame in enumerate(generator.render_motion(motion, color=color)):
            hand = frame.hands[0]
            yield LabelledFrame(frame.depth_m, intrinsics, hand.joints_xyz[None],
                                np.ones((1, NUM_JOINTS), dtype=bool),
                                f'motion-{seed + sequence}-{index}', hand.visible[None],
                                frame.color, sequence_start=index == 0)


def joint_errors_mm(pred_xyz, gt_xyz, mask):
    """
    Return per-joint 3D errors in millimetres, NaN where a joint is not labelled.

    :param pred_xyz: (..., 21, 3) metres.
    :param gt_xyz: (..., 21, 3) metres.
    :param mask: (..., 21) bool, labelled joints.
    """
    pred_xyz = np.asarray(pred_xyz, dtype=np.float64)
    gt_xyz = np.asarray(gt_xyz, dtype=np.float64)
    if pred_xyz.shape != gt_xyz.shape or pred_xyz.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f'predictions {pred_xyz.shape} and ground truth {gt_xyz.shape} must '
                         f'both be (..., {NUM_JOINTS}, 3)')
    errors = np.linalg.norm(pred_xyz - gt_xyz, axis=-1) * 1000.0
    return np.where(np.broadcast_to(mask, errors.shape), errors, np.nan)


def success_curve(errors_mm, thresholds_mm=DEFAULT_THRESHOLDS_MM):
    """
    Return the fraction of hands whose maximum labelled-joint error is <= each threshold.

    :param errors_mm: (F, 21) errors, NaN for unlabelled joints; a row that is entirely
        NaN or holds inf is a missed hand (never a success).
    :param thresholds_mm: (T,) thresholds.
    :return: (T,) fractions in [0, 1].
    """
    errors_mm = np.asarray(errors_mm, dtype=np.float64).reshape(-1, NUM_JOINTS)
    thresholds_mm = np.asarray(thresholds_mm, dtype=np.float64)
    if len(errors_mm) == 0:
        return np.zeros(len(thresholds_mm))
    labelled = ~np.isnan(errors_mm)
    worst = np.where(labelled.any(axis=1),
                     np.nanmax(np.where(labelled, errors_mm, -np.inf), axis=1), np.inf)
    return (worst[None, :] <= thresholds_mm[:, None]).mean(axis=1)


def summarize_errors(errors_mm, thresholds_mm=DEFAULT_THRESHOLDS_MM):
    """
    Return error statistics of (F, 21) errors (NaN unlabelled, rows of inf = missed hands).

    :return: dict with mean_mm, median_mm, per_joint_mm {joint name: mm or None},
        success_curve {thresholds_mm, fraction} and hands (evaluated, missed).
    """
    errors_mm = np.asarray(errors_mm, dtype=np.float64).reshape(-1, NUM_JOINTS)
    missed = np.all(np.isinf(errors_mm) | np.isnan(errors_mm), axis=1) \
        & np.any(np.isinf(errors_mm), axis=1)
    found = errors_mm[~missed]
    values = found[np.isfinite(found)]
    with np.errstate(invalid='ignore'):
        counts = np.isfinite(found).sum(axis=0)
        sums = np.where(np.isfinite(found), found, 0.0).sum(axis=0)
        per_joint = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return {
        'mean_mm': _number(values.mean()) if values.size else None,
        'median_mm': _number(np.median(values)) if values.size else None,
        'per_joint_mm': {name: _number(v) for name, v in zip(JOINT_NAMES, per_joint)},
        'success_curve': {'thresholds_mm': [float(t) for t in thresholds_mm],
                          'fraction': [_number(f) for f in success_curve(errors_mm,
                                                                         thresholds_mm)]},
        'hands': {'evaluated': int(len(found)), 'missed': int(missed.sum())},
    }


def error_breakdown(errors_mm, distance_m, cut_by_border, visible=None):
    """
    Return where the error of evaluated hands lies (see the module docstring).

    :param errors_mm: (H, 21) errors of found hands, NaN for unlabelled joints.
    :param distance_m: (H,) distance of each hand's oracle centre from the camera (its z).
    :param cut_by_border: (H,) bool, a labelled joint projects outside the image.
    :param visible: optional (H, 21) bool, joints not occluded.
    :return: dict (None when no hand was evaluated); each bin's ``range`` is [low, high],
        high None for the open last distance bin.
    """
    errors_mm = np.asarray(errors_mm, dtype=np.float64).reshape(-1, NUM_JOINTS)
    if not len(errors_mm):
        return None
    labelled = np.isfinite(errors_mm)
    # Per hand: the mean of its labelled joints (NaN for a hand with none).
    hand_mm = np.where(labelled, errors_mm, 0.0).sum(axis=1) / np.where(
        labelled.any(axis=1), labelled.sum(axis=1), np.nan)
    distance_m = np.asarray(distance_m, dtype=np.float64)
    cut_by_border = np.asarray(cut_by_border, dtype=bool)

    def group(selected):
        values = errors_mm[selected]
        return {'hands': int(selected.sum()),
                'mean_mm': _number(np.nanmean(values)) if np.isfinite(values).any() else None}

    def binned(values, edges):
        last = len(edges) - 2
        return [{'range': [float(lo), _number(hi)], **group(
            (values >= lo) & ((values < hi) | ((i == last) & (values == hi))))}
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]

    ordered = np.sort(hand_mm[np.isfinite(hand_mm)])[::-1]
    worst = max(1, int(round(len(ordered) * WORST_FRACTION)))
    result = {
        'by_distance_m': binned(distance_m, DISTANCE_BINS_M),
        'cut_by_border': group(cut_by_border), 'inside_image': group(~cut_by_border),
        'worst_fraction': WORST_FRACTION,
        'worst_share_of_error': _number(ordered[:worst].sum() / ordered.sum())
        if ordered.sum() > 0 else None,
        'mean_without_worst_mm': _number(ordered[worst:].mean())
        if len(ordered) > worst else None}
    if visible is not None:
        visible = np.asarray(visible, dtype=bool).reshape(errors_mm.shape)
        result['visible_joints_mm'] = _number(errors_mm[visible & labelled].mean()) \
            if (visible & labelled).any() else None
        result['hidden_joints_mm'] = _number(errors_mm[~visible & labelled].mean()) \
            if (~visible & labelled).any() else None
        result['hidden_joint_fraction'] = _number((~visible & labelled).sum()
                                                  / max(labelled.sum(), 1))
        result['by_visible_fraction'] = binned(visible.mean(axis=1), VISIBLE_BINS)
    return result


def _cut_by_border(frame, k):
    """Return whether a labelled joint of ground-truth hand k projects outside the image."""
    u, v, z = uvd_from_xyz(frame.joints_xyz[k][frame.joint_mask[k]], frame.intrinsics).T
    camera = frame.intrinsics
    return not np.all((z > 0) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height))


def match_centers(found_xyz, truth_xyz, radius_m=DEFAULT_MATCH_RADIUS_M):
    """
    Match found centres to ground-truth centres one-to-one, nearest pairs first.

    :param found_xyz: (N, 3) metres.
    :param truth_xyz: (K, 3) metres.
    :param radius_m: largest matching distance.
    :return: (K,) index into ``found_xyz`` for each ground truth, -1 when unmatched.
    """
    found_xyz = np.asarray(found_xyz, dtype=np.float64).reshape(-1, 3)
    truth_xyz = np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    assignment = np.full(len(truth_xyz), -1, dtype=np.int64)
    distance = np.linalg.norm(truth_xyz[:, None] - found_xyz[None], axis=-1)
    for k, n in nearest_pairs(distance, radius_m):
        assignment[k] = n
    return assignment


def _mostly_visible_hits(frame, keep, assignment):
    """Return whether each kept hand with >= MOSTLY_VISIBLE of its joints seen was found."""
    if frame.visible is None:
        return []
    return [bool(n >= 0) for k, n in zip(keep, assignment)
            if frame.visible[k].mean() >= MOSTLY_VISIBLE]


def _croppable(frame, k):
    """Return whether ground-truth hand k has labels and a centre inside the image."""
    if not frame.joint_mask[k].any():
        return False
    try:
        check_center(frame.centers_xyz[k], frame.intrinsics)
    except ValueError:
        return False
    return True


def _counted_hands(frame):
    """Return the hands of a frame that are counted: labelled, centre inside the image."""
    return [k for k in range(len(frame.joints_xyz)) if _croppable(frame, k)]


def _match_found(found_xyz, frame, radius_m):
    """
    Match found centres to every labelled hand of a frame, one to one, nearest first.

    A hand found where an uncounted hand is (labelled, its centre outside the image) is
    neither a detection of a counted hand nor a false hand.

    :return: ((len(counted),) index into ``found_xyz`` per counted hand, -1 when missed;
        (N,) bool, found centres matched to some labelled hand; number of those matched
        to an uncounted hand).
    """
    labelled = np.flatnonzero(frame.joint_mask.any(axis=1))
    found_xyz = np.asarray(found_xyz, dtype=np.float64).reshape(-1, 3)
    matched = match_centers(found_xyz, frame.centers_xyz[labelled], radius_m)
    counted = np.array([_croppable(frame, k) for k in labelled], dtype=bool)
    is_hand = np.zeros(len(found_xyz), dtype=bool)
    is_hand[matched[matched >= 0]] = True
    return matched[counted], is_hand, int((matched[~counted] >= 0).sum())


def evaluate_estimator(estimator, frames, center_mode='oracle',
                       match_radius_m=DEFAULT_MATCH_RADIUS_M,
                       thresholds_mm=DEFAULT_THRESHOLDS_MM):
    """
    Evaluate an estimator (``estimate(depth, intrinsics, centers)`` API) on labelled frames.

    :param estimator: e.g. :class:`~hand_pose_ros.core.estimator.HandPoseEstimator`.
    :param frames: iterable of :class:`LabelledFrame`.
    :param center_mode: 'oracle' (crop at the ground-truth centroid) or 'detect' (the
        estimator's own localiser).
    :return: dict: error summary (see :func:`summarize_errors`), detection figures and mean
        per-stage timings in ms; with a :class:`~hand_pose_ros.core.estimator.HandTracker`
        (detect only), also the fraction of frames the localiser ran on.
    """
    if center_mode not in CENTER_MODES:
        raise ValueError(f'center_mode must be one of {CENTER_MODES}, got {center_mode!r}')
    rows, center_errors, timings, mostly_visible, localized = [], [], [], [], []
    found = {'distance_m': [], 'cut_by_border': [], 'visible': []}
    num_frames = skipped = ignored = false_positives = 0
    for frame in frames:
        num_frames += 1
        if frame.sequence_start and hasattr(estimator, 'reset'):
            estimator.reset()
        keep = _counted_hands(frame)
        skipped += len(frame.joints_xyz) - len(keep)
        truth = frame.centers_xyz[keep]
        if center_mode == 'oracle':
            if not keep:
                continue
            hands = frame.estimate_with(estimator, centers=truth)
            assignment = np.arange(len(keep)) if len(hands) == len(keep) \
                else match_centers([h.center_xyz for h in hands], truth, 1e-9)
        else:
            # Every frame is searched, also one without a counted hand.
            hands = frame.estimate_with(estimator)
            assignment, is_hand, at_uncounted = _match_found(
                [h.center_xyz for h in hands], frame, match_radius_m)
            ignored += at_uncounted
            false_positives += int((~is_hand).sum())
            mostly_visible.extend(_mostly_visible_hits(frame, keep, assignment))
            localized.append(getattr(estimator, 'last_localized', True))
        timings.append(dict(estimator.last_timings))
        for index, k in enumerate(keep):
            if assignment[index] < 0:
                rows.append(np.full(NUM_JOINTS, np.inf))
                continue
            hand = hands[assignment[index]]
            rows.append(joint_errors_mm(hand.keypoints_xyz, frame.joints_xyz[k],
                                        frame.joint_mask[k]))
            center_errors.append(np.linalg.norm(hand.center_xyz - truth[index]) * 1000.0)
            found['distance_m'].append(truth[index][2])
            found['cut_by_border'].append(_cut_by_border(frame, k))
            found['visible'].append(None if frame.visible is None else frame.visible[k])
    errors = np.array(rows).reshape(-1, NUM_JOINTS)
    result = summarize_errors(errors, thresholds_mm)
    visible = found['visible']
    result['breakdown'] = error_breakdown(
        errors[~np.isinf(errors).any(axis=1)], found['distance_m'], found['cut_by_border'],
        np.array(visible) if visible and all(v is not None for v in visible) else None)
    hands_total = len(rows)
    detected = result['hands']['evaluated']
    result.update({
        'center_mode': center_mode,
        'frames': num_frames,
        'hands_skipped_outside_image': skipped,
        'found_skipped_hands': ignored,
        'detection_rate': _number(detected / hands_total) if hands_total else None,
        'detection_rate_mostly_visible': _number(np.mean(mostly_visible))
        if mostly_visible else None,
        'hands_mostly_visible': len(mostly_visible),
        'match_radius_mm': match_radius_m * 1000.0,
        'false_positives': false_positives,
        'false_positives_per_frame': _number(false_positives / num_frames)
        if num_frames else None,
        'center_error_mm': _stats(center_errors) if center_mode == 'detect' else None,
        'localized_fraction': _number(np.mean(localized)) if localized else None,
        'timings_ms': {stage: _number(np.mean([t[stage] for t in timings]))
                       for stage in (timings[0] if timings else {})},
    })
    return result


class FilteredEstimator:
    """
    An estimator (or hand tracker) followed by a :class:`HandFilter`, as the nodes run them.

    ``estimate`` returns the hands ``hand_filter_node`` publishes for the frame (its visible
    tracks: the valid joints, NaN elsewhere, centred on their centroid), so that
    :func:`evaluate_estimator` scores what a robot receives. Frames form a stream at ``fps``;
    :meth:`reset` starts a new one.

    :param estimator: object with ``estimate(depth, intrinsics, color=None)`` and
        ``last_timings`` (:class:`~hand_pose_ros.core.estimator.HandPoseEstimator`,
        :class:`~hand_pose_ros.core.estimator.HandTracker`).
    :param config: :class:`~hand_pose_ros.core.filters.FilterConfig` (None: defaults).
    """

    def __init__(self, estimator, config=None, fps=30.0):
        self.estimator = estimator
        self.filter = HandFilter(config)
        self.period_s = 1.0 / fps
        self.stamp_s = 0.0

    @property
    def last_timings(self):
        return self.estimator.last_timings

    @property
    def last_localized(self):
        return getattr(self.estimator, 'last_localized', True)

    def reset(self):
        """Forget the tracks (and the estimator's followed hands): a new stream starts."""
        self.filter.reset()
        if hasattr(self.estimator, 'reset'):
            self.estimator.reset()

    def estimate(self, depth, intrinsics, color=None):
        """Return the published hands of the next frame as ``HandPose`` objects."""
        from hand_pose_ros.core.estimator import HandPose

        poses = self.estimator.estimate(depth, intrinsics, color=color)
        self.stamp_s += self.period_s
        tracks = self.filter.update(self.stamp_s, [Observation(pose.keypoints_xyz, pose.scores)
                                                   for pose in poses])
        hands = []
        for track in tracks:
            valid = np.asarray(track.valid, dtype=bool)
            if not valid.any():
                continue
            keypoints = np.where(valid[:, None], track.keypoints_xyz, np.nan)
            hands.append(HandPose(keypoints_xyz=keypoints, scores=np.asarray(track.scores),
                                  center_xyz=keypoints[valid].mean(axis=0),
                                  detection_score=1.0, localizer_score=1.0))
        return hands


def fit_hand_score(estimator, frames, match_radius_m=DEFAULT_MATCH_RADIUS_M, l2=1e-3):
    """
    Fit the :class:`~hand_pose_ros.core.estimator.HandScore` of an estimator's model.

    Every hand the estimator localises is a sample, labelled a hand when its centre matches
    a ground-truth hand within ``match_radius_m`` (as :func:`evaluate_estimator` counts
    detections), else a false hand; the weights maximise the L2-regularised logistic
    likelihood of the labels. Build the estimator with ``min_hand_score=0`` and without a
    hand score of its own so that it keeps every hand its localiser finds.

    :return: (HandScore, {'hands': samples labelled hands, 'false_hands': the others}).
    :raises ValueError: the frames gave no hand or no false hand to learn from.
    """
    from hand_pose_ros.core.estimator import HandScore

    features, labels = [], []
    for frame in frames:
        hands = frame.estimate_with(estimator)
        _, is_hand, _ = _match_found([h.center_xyz for h in hands], frame, match_radius_m)
        for hand, label in zip(hands, is_hand):
            features.append(HandScore.features(hand.localizer_score, hand.scores))
            labels.append(bool(label))
    weights, counts = fit_logistic(np.array(features).reshape(-1, 3), labels, l2,
                                   'a hand score', ('hands', 'false_hands'))
    return HandScore(*(float(w) for w in weights)), counts


def fit_logistic(x, labels, l2, what, names):
    """
    Return the L2-regularised logistic regression weights of labels on features.

    :param x: (N, F) features (a bias column included by the caller).
    :param labels: (N,) bool.
    :param what: what is fitted, for the error message.
    :param names: (name of the positive count, name of the negative count).
    :return: (weights (F,), {names[0]: positives, names[1]: negatives}).
    :raises ValueError: without both positives and negatives.
    """
    from scipy.optimize import minimize

    y = np.asarray(labels, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise ValueError(f'fitting {what} needs samples of both kinds, got {positives} '
                         f'{names[0]} and {len(y) - positives} {names[1]}'.replace('_', ' '))

    def loss(w):
        z = x @ w
        p = 1.0 / (1.0 + np.exp(-z))
        value = np.sum(np.logaddexp(0.0, z) - y * z) + l2 * w @ w
        return value, x.T @ (p - y) + 2.0 * l2 * w

    weights = minimize(loss, np.zeros(x.shape[1]), jac=True, method='L-BFGS-B').x
    return weights, {names[0]: positives, names[1]: len(y) - positives}


def fit_fusion(localizer, frames, match_radius_m=DEFAULT_MATCH_RADIUS_M, l2=1e-3):
    """
    Fit the fusion weights of a :class:`~hand_pose_ros.core.hand_finder.FusedLocalizer`.

    Every proposal (geometric candidate or finder peak) of every frame is a sample,
    labelled a hand when its centre lies within ``match_radius_m`` of a ground-truth hand
    centre; the weights maximise the L2-regularised logistic likelihood.

    :return: (weights (4,), {'hands': ..., 'false_hands': ...}).
    """
    from hand_pose_ros.core.hand_finder import FUSION_FEATURES

    features, labels = [], []
    for frame in frames:
        # Every labelled hand, also one centred outside the image, is a hand.
        truth = frame.centers_xyz[frame.joint_mask.any(axis=1)]
        for center, row in localizer.proposals(frame.depth_m, frame.intrinsics):
            features.append(row)
            labels.append(bool(len(truth)) and
                          bool(np.min(np.linalg.norm(truth - center, axis=1)) <= match_radius_m))
    return fit_logistic(np.array(features).reshape(-1, len(FUSION_FEATURES)), labels, l2,
                        'the localiser fusion', ('hands', 'false_hands'))


def evaluate_localizer(localizer, frames, max_hands=2, match_radius_m=DEFAULT_MATCH_RADIUS_M):
    """
    Measure a localiser's detection rate, centre error and false positives.

    :param localizer: object with ``locate(depth_m, intrinsics, max_hands)``.
    :param frames: iterable of :class:`LabelledFrame`.
    :return: dict with frames, hands, detection_rate (and for frames with visibility labels
        detection_rate_mostly_visible: hands with >= half their joints unoccluded),
        center_error_mm statistics, false_positives (total and per frame), locate time in ms.
    """
    import time

    hands = detected = false_positives = num_frames = 0
    errors, durations, mostly_visible = [], [], []
    for frame in frames:
        num_frames += 1
        keep = _counted_hands(frame)
        start = time.perf_counter()
        candidates = localizer.locate(frame.depth_m, frame.intrinsics, max_hands=max_hands)
        durations.append((time.perf_counter() - start) * 1e3)
        truth = frame.centers_xyz[keep]
        found = np.array([c.center_xyz for c in candidates]).reshape(-1, 3)
        assignment, is_hand, _ = _match_found(found, frame, match_radius_m)
        hands += len(keep)
        detected += int((assignment >= 0).sum())
        false_positives += int((~is_hand).sum())
        errors.extend(np.linalg.norm(found[n] - truth[i]) * 1000.0
                      for i, n in enumerate(assignment) if n >= 0)
        mostly_visible.extend(_mostly_visible_hits(frame, keep, assignment))
    return {
        'frames': num_frames,
        'hands': hands,
        'detection_rate': _number(detected / hands) if hands else None,
        'match_radius_mm': match_radius_m * 1000.0,
        'detection_rate_mostly_visible': _number(np.mean(mostly_visible))
        if mostly_visible else None,
        'hands_mostly_visible': len(mostly_visible),
        'center_error_mm': _stats(errors),
        'false_positives': false_positives,
        'false_positives_per_frame': _number(false_positives / num_frames)
        if num_frames else None,
        'locate_ms': _stats(durations),
    }


def draw_success_curves(curves, path, size=(640, 480)):
    """
    Draw success-frame curves as a PNG (pillow; no matplotlib).

    :param curves: {label: (thresholds_mm, fractions)}.
    :param path: output PNG path.
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 24, 50
    image = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(image)
    all_thresholds = np.concatenate([np.asarray(t, dtype=np.float64) for t, _ in
                                     curves.values()]) if curves else np.array([80.0])
    t_max = max(float(all_thresholds.max()), 1.0)

    def point(t, f):
        return (left + (width - left - right) * t / t_max,
                height - bottom - (height - top - bottom) * f)

    for step in range(11):
        fraction = step / 10
        draw.line([point(0, fraction), point(t_max, fraction)], fill=(225, 225, 225))
        draw.text((8, point(0, fraction)[1] - 6), f'{fraction * 100:.0f}%', fill='black')
    tick = 10 ** math.floor(math.log10(t_max))
    for t in np.arange(0, t_max + 1e-9, tick if t_max / tick >= 4 else tick / 2):
        draw.line([point(t, 0), point(t, 1)], fill=(225, 225, 225))
        draw.text((point(t, 0)[0] - 8, height - bottom + 6), f'{t:g}', fill='black')
    draw.rectangle([point(0, 1), point(t_max, 0)], outline='black')
    draw.text((width // 2 - 110, height - 22), 'maximum joint error threshold (mm)',
              fill='black')
    draw.text((left, 4), 'fraction of hands with every joint within the threshold',
              fill='black')
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    for index, (label, (thresholds, fractions)) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        pts = [point(t, f) for t, f in zip(thresholds, fractions) if f is not None]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((left + 10, top + 8 + 14 * index), f'{label}', fill=colour)
    image.save(path)
    return path


def _number(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _stats(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    return {'mean': _number(values.mean()), 'median': _number(np.median(values)),
            'p90': _number(np.percentile(values, 90)), 'max': _number(values.max())}
