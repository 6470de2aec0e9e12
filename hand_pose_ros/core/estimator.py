"""
The public hand pose estimator: depth image in, 3D hand keypoints out.

``HandPoseEstimator`` is assembled from parts passed in (localiser, crop spec, backend),
so tests and users can swap any of them; :func:`load_estimator` builds one from a model
card. One call runs: localise (or take given centres) -> crop (:mod:`crop`) -> one batched
backend call -> decode (crop transform back to the camera frame) -> hand score (localised
hands only, see :class:`HandScore`). With ``views`` > 1, the hands that are reported are
then seen again turned and mirrored (one more batched call) and the views are merged by
confidence.

Usage::

    from hand_pose_ros.core import CameraIntrinsics, load_estimator
    est = load_estimator('default', backend='auto')
    hands = est.estimate(depth, CameraIntrinsics(fx, fy, cx, cy, width, height))
"""

from dataclasses import dataclass, fields, replace
import logging
import math
import numbers
from pathlib import Path
import time

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, check_depth, depth_to_metres
from hand_pose_ros.core.crop import (
    BACKGROUND_VALUE, batch_views, check_center, check_color, check_views, color_batch,
    crop_batch, CropSpec, merge_views)
from hand_pose_ros.core.localizer import DepthHandLocalizer, LocalizerConfig, logit, sigmoid
from hand_pose_ros.core.skeleton import NUM_JOINTS

LOGGER = logging.getLogger(__name__)

STAGES = ('localize', 'find', 'crop', 'infer', 'decode')
# Network inputs the estimator can make: depth crops, and colour crops of the same windows.
INPUT_NAMES = ('depth', 'color')
# Two localised hands whose crop centres end up closer than this are one hand.
DUPLICATE_DISTANCE_M = 0.05
# A re-centring pass is skipped when it would move no hand's crop centre more than this
# (about two crop pixels of the default model at arm's length): the crops have converged.
# A followed hand's crop (HandTracker) usually has after its first pass.
REFINE_CONVERGED_M = 0.005
# Localised hands whose fitted hand score (HandScore) is lower are dropped.
DEFAULT_MIN_HAND_SCORE = 0.2
# Frames from one localisation to the next while HandTracker follows hands (node default).
DEFAULT_REDETECT_INTERVAL = 3
# A followed hand must keep at least this hand score, else the frame is searched again: a
# crop left where a hand was (a scene cut, a hand that moved away fast) can still look
# hand-like enough for the estimator's own, lower threshold.
FOLLOW_MIN_SCORE = 0.5
# HandTracker compares each frame with the last on a coarse grid (every SCENE_GRID_STRIDE-th
# pixel): when more than SCENE_CHANGE_FRACTION of the pixels valid in both moved by more
# than SCENE_CHANGE_M, the view changed (camera moved, a cut in a recording) and the frame
# is searched again.
SCENE_GRID_STRIDE = 8
SCENE_CHANGE_M = 0.05
SCENE_CHANGE_FRACTION = 0.3
# With a hand score, the localiser's next-best candidate is scored too, so a true hand the
# localiser ranked just below max_hands can take the place of a rejected false one.
SPARE_CANDIDATES = 1
# Package model directory (source tree and editable installs) and the ament share directory.
PACKAGE_MODELS_DIR = Path(__file__).resolve().parents[2] / 'models'


@dataclass(frozen=True)
class HandPose:
    """
    One estimated hand.

    :param keypoints_xyz: (21, 3) float64 metres, camera optical frame, canonical
        MediaPipe order.
    :param scores: (21,) float64 per-joint confidence in [0, 1].
    :param center_xyz: (3,) crop centre used, metres.
    :param detection_score: confidence in [0, 1] that this is a hand: the model's
        :class:`HandScore` when its card has one, else the localiser score (1.0 for centres
        given by the caller).
    :param localizer_score: the localiser's own score (1.0 for given centres).
    """

    keypoints_xyz: np.ndarray
    scores: np.ndarray
    center_xyz: np.ndarray
    detection_score: float
    localizer_score: float


@dataclass(frozen=True)
class HandScore:
    """
    Probability that a localised crop holds a hand, from the localiser and the network.

    ``P = sigmoid(bias + localizer_weight * logit(localiser score) + joint_weight * mean
    joint confidence)``. The localiser judges shape; the network's confidence drops on
    crops of arms, bodies and clutter, so the two together reject far more false hands
    than either alone. The weights depend on the network's confidence scale, so they are
    fitted per model (:func:`hand_pose_ros.core.evaluation.fit_hand_score`,
    ``hand_pose_evaluate --fit-hand-score``) and kept in the card's ``hand_score`` section.
    """

    bias: float
    localizer_weight: float
    joint_weight: float

    @classmethod
    def from_card(cls, card):
        """Return the card's HandScore, or None when it has no ``hand_score`` section."""
        section = card.get('hand_score')
        if section is None:
            return None
        try:
            values = {f.name: float(section[f.name]) for f in fields(cls)}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f'bad hand_score section {section!r} ({error!r})') from None
        if not all(math.isfinite(v) for v in values.values()):
            # A NaN score would reject every hand without a word.
            raise ValueError(f'bad hand_score section {section!r}: values must be finite')
        return cls(**values)

    @staticmethod
    def features(localizer_score, joint_scores):
        """Return a hand's (3,) features: 1, localiser logit, mean joint confidence."""
        return np.array([1.0, logit(localizer_score), float(np.mean(joint_scores))])

    def __call__(self, localizer_score, joint_scores):
        """Return the hand probability of one hand."""
        return float(sigmoid(np.dot([self.bias, self.localizer_weight, self.joint_weight],
                                    self.features(localizer_score, joint_scores))))


class HandPoseEstimator:
    """
    Localise, crop, infer and decode hands in depth images.

    :param localizer: object with ``locate(depth_m, intrinsics, max_hands)`` returning
        candidates with ``center_xyz`` and ``score`` (e.g. :class:`DepthHandLocalizer`).
    :param spec: :class:`CropSpec` the backend's network was trained with.
    :param backend: callable ``batch -> {'joints': (N, 21, 3) normalised crop coordinates,
        'confidence': (N, 21)}``; ``batch`` is the (N, 1, S, S) float32 depth crops for a
        depth-only network, else a dict of its inputs (see ``input_names``).
    :param max_hands: most hands returned per image when no centres are given.
    :param refine_passes: extra passes for localised hands, each re-cropping at the joint
        centroid of the previous pass (the localiser's centre is a rough palm estimate;
        networks are trained on crops at the joint centroid); a pass is made only while it
        moves some centre by ``REFINE_CONVERGED_M`` or more. Given centres are used as is.
    :param name: model name, for logs.
    :param hand_score: :class:`HandScore` of the model, or None (localiser score only).
    :param min_hand_score: localised hands whose hand score is lower are dropped (only
        with a ``hand_score``; the localiser applies its own ``min_score``).
    :param views: test-time views of each reported hand (1, 2, 4 or 8; see
        :data:`~hand_pose_ros.core.crop.VIEW_SETS`): after the last pass and the hand score,
        the network sees each kept hand's crop turned (and mirrored) too and the views are
        merged (:func:`~hand_pose_ros.core.crop.merge_views`); more accurate, ``views - 1``
        more crops per reported hand. The hand score is computed before, on the single view
        it was fitted on.
    :param input_names: the network's inputs: ``('depth',)``, or with ``'color'`` for an RGB
        network (:class:`~hand_pose_ros.core.models.JointGroupsRGB`): each hand's window is
        then also cut out of a colour image registered to the depth image (same camera and
        size, e.g. a depth stream aligned to the colour stream), which ``estimate`` needs.
        The depth image still finds the hands and places them in 3D.

    After each :meth:`estimate`, ``last_timings`` holds the milliseconds spent per stage:
    localize (input checks, conversion and the localiser), find (the learned hand finder's
    network, 0 without one), crop, infer, decode (summed over the passes). Localised hands
    that converge onto one hand are reported once.
    """

    def __init__(self, localizer, spec, backend, max_hands=2, refine_passes=1, name='model',
                 hand_score=None, min_hand_score=DEFAULT_MIN_HAND_SCORE, views=1,
                 input_names=('depth',)):
        if not isinstance(spec, CropSpec):
            raise ValueError(f'spec must be a CropSpec, got {type(spec).__name__}')
        if int(max_hands) < 1:
            raise ValueError(f'max_hands must be >= 1, got {max_hands}')
        self.localizer = localizer
        self.spec = spec
        self.backend = backend
        if int(refine_passes) < 0:
            raise ValueError(f'refine_passes must be >= 0, got {refine_passes}')
        self.max_hands = int(max_hands)
        self.refine_passes = int(refine_passes)
        self.name = name
        if not 0.0 <= min_hand_score <= 1.0:
            raise ValueError(f'min_hand_score must be in [0, 1], got {min_hand_score}')
        self.hand_score = hand_score
        self.min_hand_score = float(min_hand_score)
        check_views(views)
        self.views = views
        unknown = set(input_names) - set(INPUT_NAMES)
        if not input_names or unknown:
            raise ValueError(f'input_names must name some of {INPUT_NAMES}, got {input_names}')
        self.input_names = tuple(input_names)
        self.last_timings = dict.fromkeys(STAGES, 0.0)

    def estimate(self, depth, intrinsics, centers=None, color=None):
        """
        Estimate the 3D keypoints of the hands in a depth image.

        :param depth: (H, W) uint16 millimetres (0 invalid) or float32 metres (NaN, inf,
            <= 0 invalid).
        :param intrinsics: :class:`CameraIntrinsics` of the image.
        :param centers: optional (N, 3) hand centres, metres; None runs the localiser.
        :param color: (H, W, 3) uint8 RGB image registered to ``depth``; needed by a network
            with a colour input, unused by depth-only networks.
        :return: list of :class:`HandPose`, primary hand first; empty when no hand is found.
        :raises ValueError: bad image, intrinsics that do not match it, a missing or bad
            colour image for a colour network, or given centres that are not finite, behind
            the camera or outside the image.
        """
        start, timings = time.perf_counter(), self._new_timings()
        depth_m = self._checked_depth(depth, intrinsics)
        color = self._checked_color(color, intrinsics)
        if centers is None:
            if not np.isfinite(depth_m).any():
                return []
            spare = SPARE_CANDIDATES if self.hand_score is not None else 0
            candidates = self.localizer.locate(depth_m, intrinsics,
                                               max_hands=self.max_hands + spare)
            # A fused localiser reports the time its finder network took.
            timings['find'] = getattr(self.localizer, 'last_find_ms', 0.0)
            centers_xyz = np.array([c.center_xyz for c in candidates], dtype=np.float64)
            localizer_scores = [float(c.score) for c in candidates]
        else:
            centers_xyz = self._checked_centers(centers, intrinsics)
            localizer_scores = [1.0] * len(centers_xyz)
        timings['localize'] = (time.perf_counter() - start) * 1e3 - timings['find']
        return self._estimate_at((depth_m, color), intrinsics, centers_xyz, localizer_scores,
                                 timings, localised=centers is None)

    def estimate_near(self, depth, intrinsics, centers, localizer_scores, color=None):
        """
        Estimate hands expected near given centres as if the localiser had found them there.

        Unlike ``estimate(..., centers=...)``, the crops are re-centred (``refine_passes``)
        and the hand score judges each hand, so a centre where no hand is any more returns
        nothing: :class:`HandTracker` follows hands from frame to frame with it.

        :param centers: (N, 3) expected hand centres, metres, inside the image.
        :param localizer_scores: (N,) the localiser's scores of these hands when last found.
        :param color: as for :meth:`estimate`.
        :return: list of :class:`HandPose` (hand score, duplicates and ``max_hands`` applied).
        """
        start, timings = time.perf_counter(), self._new_timings()
        # The crops convert their own samples: no localiser needs the image in metres.
        depth = self._checked_depth(depth, intrinsics, metres=False)
        color = self._checked_color(color, intrinsics)
        centers_xyz = self._checked_centers(centers, intrinsics)
        if len(localizer_scores) != len(centers_xyz):
            raise ValueError(f'{len(localizer_scores)} localizer scores for '
                             f'{len(centers_xyz)} centres')
        timings['localize'] = (time.perf_counter() - start) * 1e3
        return self._estimate_at((depth, color), intrinsics, centers_xyz,
                                 [float(score) for score in localizer_scores], timings,
                                 localised=True)

    def _new_timings(self):
        self.last_timings = dict.fromkeys(STAGES, 0.0)
        return self.last_timings

    @staticmethod
    def _checked_depth(depth, intrinsics, metres=True):
        """Return the checked image, in float32 metres (NaN invalid) or as given."""
        if not isinstance(intrinsics, CameraIntrinsics):
            raise ValueError(f'intrinsics must be a CameraIntrinsics, '
                             f'got {type(intrinsics).__name__}')
        depth = depth_to_metres(depth) if metres else check_depth(depth)
        intrinsics.check_image(depth)
        return depth

    def _checked_color(self, color, intrinsics):
        """Return the colour image a colour network needs (None for a depth network)."""
        if 'color' not in self.input_names:
            return None
        if color is None:
            raise ValueError(f'{self.name} takes a colour image registered to the depth '
                             f'image: pass color=(H, W, 3) uint8 RGB')
        return check_color(color, intrinsics)

    @staticmethod
    def _checked_centers(centers, intrinsics):
        if np.iscomplexobj(centers):
            raise ValueError('centers must be real (N, 3) metres, got complex values')
        try:
            centers_xyz = np.asarray(centers, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f'centers must be (N, 3) numbers in metres, got '
                             f'{type(centers).__name__}') from None
        if centers_xyz.ndim == 1 and centers_xyz.shape == (3,):
            centers_xyz = centers_xyz[None]
        if centers_xyz.ndim != 2 or centers_xyz.shape[1] != 3:
            raise ValueError(f'centers must have shape (N, 3), got {centers_xyz.shape}')
        for center in centers_xyz:
            check_center(center, intrinsics)
        return centers_xyz

    def _estimate_at(self, images, intrinsics, centers_xyz, localizer_scores, timings,
                     localised):
        """
        Run the passes, the hand score and the views on hands at given centres.

        :param images: the checked depth image, in metres or as the camera gave it (the
            crops take either), and the checked colour image (None for a depth network).
        :param localised: the centres are rough (the localiser's or a tracker's): re-centre
            them (``refine_passes``) and judge each hand with the hand score; else they
            are the caller's centres, used as given.
        """
        if len(centers_xyz) == 0:
            return []
        passes = 1 + (self.refine_passes if localised else 0)
        hands = []
        for index in range(passes):
            if index > 0:
                # Re-centre each crop on the joint centroid of the previous pass (the
                # centre the network was trained with); keep centres that would leave
                # the image.
                refined = np.array([
                    _refined_center(hand.keypoints_xyz, old, intrinsics,
                                    min(self.spec.cube_size_m[:2]) / 2.0)
                    for hand, old in zip(hands, centers_xyz)])
                if np.all(np.linalg.norm(refined - centers_xyz, axis=1) < REFINE_CONVERGED_M):
                    break  # re-centring would hardly move any crop: it has converged
                centers_xyz = refined
                localizer_scores = [hand.localizer_score for hand in hands]
            hands, centers_xyz, crops = self._infer(images, intrinsics, centers_xyz,
                                                    localizer_scores, timings)
            if not hands:
                return []
        rows = self._reported(hands) if localised else list(enumerate(hands))
        if self.views > 1 and rows:
            return self._with_views(rows, crops, timings)
        return [hand for _, hand in rows]

    def _reported(self, hands):
        """
        Return the localised hands to report, best first, as (index, hand) pairs.

        The model's hand score (if any) replaces each hand's detection score and drops
        unlikely hands; hands whose crop centres or joint centroids came within
        ``DUPLICATE_DISTANCE_M`` of a better one's are dropped; at most ``max_hands`` are
        kept.
        """
        if self.hand_score is not None:
            hands = [replace(hand, detection_score=self.hand_score(hand.localizer_score,
                                                                   hand.scores))
                     for hand in hands]
            hands = [hand if hand.detection_score >= self.min_hand_score else None
                     for hand in hands]
        kept = []
        for index, hand in sorted(((i, h) for i, h in enumerate(hands) if h is not None),
                                  key=lambda pair: -pair[1].detection_score):
            if not any(_same_hand(hand, other) for _, other in kept):
                kept.append((index, hand))
        return kept[:self.max_hands]

    def _with_views(self, rows, crops, timings):
        """
        Merge each reported hand's joints over its crop's views.

        :param rows: (index, hand) pairs; index into ``crops``, the last pass's
            (network inputs, transforms, normalised joints, confidences) of its hands. The
            first view is the crop itself, already through the network.
        """
        inputs, transforms, joints, confidence = crops
        index = [i for i, _ in rows]
        views = self.views   # read once: the views made and the views undone must agree
        start = time.perf_counter()
        others = {name: batch_views(batch[index], views)[len(index):]
                  for name, batch in inputs.items()}
        timings['crop'] += (time.perf_counter() - start) * 1e3

        seen_joints, seen_confidence = self._network(others, timings)
        now = time.perf_counter()
        mean_joints, mean_confidence = merge_views(
            np.concatenate([joints[index], seen_joints]),
            np.concatenate([confidence[index], seen_confidence]), views)
        hands = []
        for (i, hand), hand_joints, scores in zip(rows, mean_joints, mean_confidence):
            keypoints = transforms[i].xyz_from_normalized(hand_joints)
            if _usable(keypoints):  # else keep the single view
                hand = replace(hand, keypoints_xyz=keypoints, scores=np.clip(scores, 0.0, 1.0))
            hands.append(hand)
        timings['decode'] += (time.perf_counter() - now) * 1e3
        return hands

    def _infer(self, images, intrinsics, centers_xyz, localizer_scores, timings):
        """
        Crop, infer and decode.

        :return: (hands, their centres, (network inputs, transforms, normalised joints,
            confidences) of their crops), dropping hands with non-finite joints.
        """
        depth, color = images
        start = time.perf_counter()
        batch, transforms = crop_batch(depth, intrinsics, centers_xyz.reshape(-1, 3),
                                       self.spec)
        inputs = {'depth': batch}
        if color is not None:
            inputs['color'] = color_batch(color, transforms)
        inputs = {name: inputs[name] for name in self.input_names}
        timings['crop'] += (time.perf_counter() - start) * 1e3

        joints, confidence = self._network(inputs, timings)
        now = time.perf_counter()
        hands, kept = [], []
        # A crop without one depth sample in its cube shows nothing to estimate a hand from
        # (e.g. given centres on an all-invalid image).
        seen = (batch < BACKGROUND_VALUE).reshape(len(batch), -1).any(axis=1)
        for i, transform in enumerate(transforms):
            if not seen[i]:
                continue
            keypoints = transform.xyz_from_normalized(joints[i])
            if not _usable(keypoints):
                LOGGER.warning('%s: hand %d dropped: joints not finite or not in front of '
                               'the camera', self.name, i)
                continue
            hands.append(HandPose(keypoints_xyz=keypoints,
                                  scores=np.clip(confidence[i], 0.0, 1.0),
                                  center_xyz=transform.center_xyz.copy(),
                                  detection_score=localizer_scores[i],
                                  localizer_score=localizer_scores[i]))
            kept.append(i)
        timings['decode'] += (time.perf_counter() - now) * 1e3
        return hands, centers_xyz[kept], ({name: batch[kept] for name, batch in inputs.items()},
                                          [transforms[i] for i in kept],
                                          joints[kept], confidence[kept])

    def _network(self, inputs, timings):
        """Run the backend on {input name: batch} (timed as ``infer``); return checked outputs."""
        start = time.perf_counter()
        outputs = self.backend(inputs['depth'] if self.input_names == ('depth',) else inputs)
        timings['infer'] += (time.perf_counter() - start) * 1e3
        return self._check_outputs(outputs, len(next(iter(inputs.values()))))

    def _check_outputs(self, outputs, count):
        try:
            joints = np.asarray(outputs['joints'], dtype=np.float64)
            confidence = np.asarray(outputs['confidence'], dtype=np.float64)
        except (KeyError, TypeError):
            raise ValueError(f'{self.name}: backend must return a dict with "joints" and '
                             f'"confidence", got {type(outputs).__name__}') from None
        if joints.shape != (count, NUM_JOINTS, 3) or confidence.shape != (count, NUM_JOINTS):
            raise ValueError(f'{self.name}: backend returned joints {joints.shape} and '
                             f'confidence {confidence.shape}; expected ({count}, {NUM_JOINTS}, '
                             f'3) and ({count}, {NUM_JOINTS})')
        confidence = np.where(np.isfinite(confidence), confidence, 0.0)
        return joints, confidence


class HandTracker:
    """
    Follow hands through a depth stream, running the localiser only when needed.

    Finding hands (the geometric localiser and the learned finder) costs more than the
    rest of a frame's work outside the network. Once hands are found, the next frame
    crops each one at its last joint centroid moved on by its last frame-to-frame motion,
    then runs the estimator's usual re-centring passes and hand score on those crops
    (:meth:`HandPoseEstimator.estimate_near`). The localiser runs again, on the same frame,
    when a followed hand's hand score falls below ``FOLLOW_MIN_SCORE``, when its centre
    leaves the image, when most of the view changed since the last frame (a moved camera, a
    cut in a recording; see ``SCENE_CHANGE_FRACTION``); and every
    ``redetect_interval`` frames, so that a hand entering the view is found within that
    many frames and a crop that drifted onto something else is dropped. Without a hand
    score (a card without ``hand_score``, or an estimator without one) nothing tells a lost
    hand from a found one, so every frame is localised.

    :param estimator: :class:`HandPoseEstimator` (or any object with its ``estimate``).
    :param redetect_interval: frames from one localisation to the next while hands are
        followed; 1 localises every frame (no following).

    ``estimate`` has the estimator's signature (without ``centers``); after each call
    ``last_localized`` says whether the localiser ran, and ``last_timings`` holds the
    stage times of the frame (the following attempt and the localisation together).
    """

    def __init__(self, estimator, redetect_interval=DEFAULT_REDETECT_INTERVAL):
        self.estimator = estimator
        self.redetect_interval = redetect_interval
        self.last_localized = False
        self.last_timings = dict.fromkeys(STAGES, 0.0)
        self.reset()

    @property
    def redetect_interval(self):
        return self._redetect_interval

    @redetect_interval.setter
    def redetect_interval(self, frames):
        if not isinstance(frames, numbers.Real) or isinstance(frames, bool) \
                or int(frames) != frames or frames < 1:
            raise ValueError(f'redetect_interval must be an integer >= 1, got {frames!r}')
        self._redetect_interval = int(frames)

    def reset(self):
        """Forget the followed hands: the next frame is localised."""
        self._hands = []
        self._motion = []
        self._since_localized = 0
        self._grid = None

    def estimate(self, depth, intrinsics, color=None):
        """Return the :class:`HandPose` list of the next frame of the stream."""
        estimator = self.estimator
        timings = dict.fromkeys(STAGES, 0.0)
        hands = None
        grid = coarse_depth_m(depth)
        changed = self._grid is None or grid.shape != self._grid.shape or _scene_changed(
            self._grid, grid)
        self._grid = grid
        if (self._hands and not changed and getattr(estimator, 'hand_score', None) is not None
                and self._since_localized + 1 < self.redetect_interval):
            centers = [hand.keypoints_xyz.mean(axis=0) + motion
                       for hand, motion in zip(self._hands, self._motion)]
            if all(_inside(center, intrinsics) for center in centers):
                found = estimator.estimate_near(depth, intrinsics, centers,
                                                [h.localizer_score for h in self._hands],
                                                color=color)
                _add_timings(timings, estimator.last_timings)
                kept = len(found) == len(self._hands) and all(
                    hand.detection_score >= FOLLOW_MIN_SCORE for hand in found)
                hands = found if kept else None
        self.last_localized = hands is None
        if hands is None:
            hands = estimator.estimate(depth, intrinsics, color=color)
            _add_timings(timings, estimator.last_timings)
            self._since_localized = 0
            self._motion = [np.zeros(3)] * len(hands)
        else:
            self._since_localized += 1
            # Hands come back best first, which need not be the order they were followed in:
            # each is paired with a followed hand, one to one, the least motion in all.
            from scipy.optimize import linear_sum_assignment

            before = np.array([hand.keypoints_xyz.mean(axis=0) for hand in self._hands])
            now = np.array([hand.keypoints_xyz.mean(axis=0) for hand in hands])
            rows, columns = linear_sum_assignment(
                np.linalg.norm(now[:, None] - before[None], axis=-1))
            self._motion = list(now[rows] - before[columns])
        self._hands = hands
        self.last_timings = timings
        return hands


def _usable(keypoints_xyz):
    """Return whether decoded joints are finite and in front of the camera."""
    return bool(np.all(np.isfinite(keypoints_xyz)) and keypoints_xyz[:, 2].min() > 0.0)


def coarse_depth_m(depth):
    """Return every SCENE_GRID_STRIDE-th pixel of a depth image in metres (NaN invalid)."""
    return depth_to_metres(check_depth(depth)[::SCENE_GRID_STRIDE, ::SCENE_GRID_STRIDE])


def _scene_changed(before, after):
    """Return whether more than SCENE_CHANGE_FRACTION of two coarse grids' pixels moved."""
    with np.errstate(invalid='ignore'):
        moved = np.abs(after - before) > SCENE_CHANGE_M
        both = np.isfinite(before) & np.isfinite(after)
    return bool(np.count_nonzero(moved & both) > SCENE_CHANGE_FRACTION * max(
        np.count_nonzero(both), 1))


def _inside(center_xyz, intrinsics):
    """Return whether a centre lies in front of the camera and inside the image."""
    try:
        check_center(center_xyz, intrinsics)
    except ValueError:
        return False
    return True


def _add_timings(total, timings):
    for stage, value in timings.items():
        total[stage] += value


def _same_hand(hand, other):
    """
    Return whether two localised hands are one.

    They are when their crops converged (re-centring passes) or, crops apart, the network
    put both hands' joints in one place.
    """
    return any(np.linalg.norm(a - b) < DUPLICATE_DISTANCE_M for a, b in (
        (hand.center_xyz, other.center_xyz),
        (hand.keypoints_xyz.mean(axis=0), other.keypoints_xyz.mean(axis=0))))


def _refined_center(keypoints_xyz, previous_xyz, intrinsics, max_shift_m):
    """Return the joint centroid, or the previous centre when the centroid is unusable."""
    center = keypoints_xyz.mean(axis=0)
    if np.linalg.norm(center - previous_xyz) > max_shift_m:
        return previous_xyz
    try:
        return check_center(center, intrinsics)
    except ValueError:
        return previous_xyz


def model_search_dirs():
    """Return the directories searched for named model cards, in order."""
    from hand_pose_ros.core.install import share_dirs

    return [PACKAGE_MODELS_DIR] + [share / 'models' for share in share_dirs()]


def resolve_card(model):
    """
    Return the path of a model card from a name ('default') or a path to a ``.yaml`` card.

    :raises ModelFileError: when no card is found; the message names the paths tried.
    """
    from hand_pose_ros.core.model_io import CARD_SUFFIX, ModelFileError

    path = Path(model)
    if path.suffix == CARD_SUFFIX or path.parent != Path('.'):
        if path.is_file():
            return path
        raise ModelFileError(f'model card {path}: file not found')
    tried = [directory / f'{model}{CARD_SUFFIX}' for directory in model_search_dirs()]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f'model {model!r}: card file not found (looked for {", ".join(map(str, tried))}); '
        f'train one with hand_pose_train or pass the path of a model card')


def load_estimator(model='default', backend='auto', max_hands=2, refine_passes=None,
                   localizer_config=None, min_hand_score=DEFAULT_MIN_HAND_SCORE,
                   use_finder=True, views=None, **backend_options):
    """
    Build a :class:`HandPoseEstimator` from a model card.

    :param model: model name (a card ``NAME.yaml`` in the package's models directory) or
        the path of a card.
    :param backend: backend name for ``hand_pose_ros.core.backends.create_backend``
        ('auto' picks the best available runtime).
    :param max_hands: most hands per image.
    :param refine_passes: re-centring passes for localised hands (see
        :class:`HandPoseEstimator`); None: the card's ``inference.refine_passes`` (1 when
        the card has none).
    :param localizer_config: :class:`LocalizerConfig`; default: the card's ``localizer``
        section, else the defaults.
    :param min_hand_score: see :class:`HandPoseEstimator` (0 keeps every localised hand).
    :param use_finder: when the card has a learned hand finder (``finder`` section), fuse
        it with the geometric localiser (:class:`~hand_pose_ros.core.hand_finder.
        FusedLocalizer`); False uses the geometric localiser alone.
    :param views: test-time views per crop (see :class:`HandPoseEstimator`); None: the
        card's ``inference.views`` (1 when the card has none).
    :param backend_options: passed on to the backend factory.
    :raises ModelFileError: missing or corrupted model file (names the file and why).
    """
    from hand_pose_ros.core.model_io import card_input_names, ModelFileError, read_card

    card_path = resolve_card(model)
    card = read_card(card_path, verify=True)
    for name in ('config', 'inputs', 'localizer', 'inference', 'hand_score', 'finder'):
        if not isinstance(card.get(name, {}), dict):
            raise ModelFileError(f'model card {card_path}: "{name}" must be a mapping, got '
                                 f'{card[name]!r}')
    if 'crop' not in card:
        raise ModelFileError(f'model card {card_path}: no "crop" section (crop spec the '
                             f'network was trained with)')
    try:
        spec = CropSpec.from_dict(card['crop'])
    except (TypeError, ValueError) as error:
        raise ModelFileError(f'model card {card_path}: bad "crop" section ({error})') from None
    input_names = card_input_names(card)
    if not input_names or not set(input_names) <= set(INPUT_NAMES):
        raise ModelFileError(f'model card {card_path}: the estimator makes the network inputs '
                             f'{list(INPUT_NAMES)}, this network takes {list(input_names)}')
    _check_input_size(card_path, card, spec.input_size)
    if localizer_config is None:
        try:
            localizer_config = LocalizerConfig(**card.get('localizer', {}))
        except (TypeError, ValueError) as error:
            raise ModelFileError(f'model card {card_path}: bad "localizer" section '
                                 f'({error})') from None
    localizer = card_localizer(card_path, card, localizer_config, use_finder,
                               backend_options.get('threads'))
    try:
        hand_score = HandScore.from_card(card)
    except ValueError as error:
        raise ModelFileError(f'model card {card_path}: {error}') from None
    inference = card.get('inference', {})
    if views is None:
        views = inference.get('views', 1)
        try:
            check_views(views)
        except ValueError as error:
            raise ModelFileError(f'model card {card_path}: inference.{error}') from None
    if refine_passes is None:
        refine_passes = inference.get('refine_passes', 1)
        if not isinstance(refine_passes, int) or isinstance(refine_passes, bool) \
                or refine_passes < 0:
            raise ModelFileError(f'model card {card_path}: inference.refine_passes must be an '
                                 f'integer >= 0, got {refine_passes!r}')
    from hand_pose_ros.core.backends import create_backend

    runtime = create_backend(backend, card_path, **backend_options)
    LOGGER.info('estimator: model %s, backend %s', card.get('name', card_path),
                getattr(runtime, 'name', backend))
    return HandPoseEstimator(localizer, spec, runtime,
                             max_hands=max_hands, refine_passes=refine_passes,
                             name=str(card.get('name', model)), hand_score=hand_score,
                             min_hand_score=min_hand_score, views=views,
                             input_names=input_names)


def _check_input_size(card_path, card, size):
    """Refuse a card whose crop size is not the size its network takes (a damaged card)."""
    from hand_pose_ros.core.model_io import ModelFileError

    sizes = {'config.input_size': (card.get('config') or {}).get('input_size')}
    for name, section in (card.get('inputs') or {}).items():
        shape = section.get('shape') if isinstance(section, dict) else None
        sizes[f'inputs.{name}.shape'] = tuple(shape[-2:]) if isinstance(shape, list) else None
    wrong = {key: value for key, value in sizes.items()
             if value is not None and value not in (size, (size, size))}
    if wrong:
        raise ModelFileError(f'model card {card_path}: crop.input_size {size} differs from '
                             f'the network input size ({wrong})')


def card_localizer(card_path, card, config, use_finder=True, threads=None):
    """
    Return the localiser a model card asks for: geometric, or fused with its finder.

    :param card: the card, read (and its files verified) by ``model_io.read_card``.
    :param config: :class:`LocalizerConfig` of the geometric part.
    :param threads: ONNX Runtime threads of the finder (None: its default).
    :raises ModelFileError: a ``finder`` section without a usable file or weights.
    """
    from hand_pose_ros.core.model_io import card_file, ModelFileError

    geometric = DepthHandLocalizer(config)
    section = card.get('finder')
    if not use_finder or section is None:
        return geometric
    from hand_pose_ros.core.hand_finder import FUSION_FEATURES, FusedLocalizer, \
        LearnedHandFinder

    try:
        weights = np.asarray(section.get('fusion_weights', ()), dtype=np.float64)
    except (TypeError, ValueError):
        weights = np.full(0, np.nan)
    if weights.shape != (len(FUSION_FEATURES),) or not np.all(np.isfinite(weights)):
        raise ModelFileError(
            f'model card {card_path}: finder fusion_weights must be {len(FUSION_FEATURES)} '
            f'finite numbers ({", ".join(FUSION_FEATURES)}), got '
            f'{section.get("fusion_weights")!r}')
    path = card_file(card_path, card, 'onnx', section)
    try:
        finder = LearnedHandFinder(path, threads=threads)
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelFileError(f'model file {path}: cannot be loaded as a finder ({error})'
                             ) from None
    return FusedLocalizer(geometric, finder, weights)
