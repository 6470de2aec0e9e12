"""
Online hand filter: anatomy, association, motion gates, smoothing and gap prediction.

Per frame (``HandFilter.update(stamp_s, observations)``):

1. time checks: a stamp earlier than the last one (bag loop) or a silence longer than
   ``stale_timeout_s`` resets every track; a repeated stamp returns the last output;
2. hand-level anatomy (hand length, knuckle breadth) rejects whole detections, then the
   ``tracking.max_hands`` most confident detections are kept;
3. detections are associated with tracks on palm distance, nearest pairs first
   (``tracking.gate_m``); unmatched detections start tracks with new ids, published once
   detected in ``tracking.min_detections`` consecutive frames (dropped if they miss one
   before: a false hand seen once never shows);
4. per track: joint-level anatomy (bones against absolute, relative and calibrated bounds,
   joint angles, self-intersection) with the configured action, then the motion gates
   against the track's constant-velocity Kalman prediction, then the smoother
   (One Euro on the accepted observations, or the Kalman estimate itself);
5. joints without an accepted observation are predicted by the Kalman model for up to
   ``max_gap_s`` and marked invalid afterwards; tracks without detections for
   ``stale_timeout_s`` are dropped;
6. confident, fully valid, unflagged frames feed the per-user bone calibration.

No wall clock is used: every time step comes from the stamps.
"""

import collections
import dataclasses
import math

import numpy as np

from hand_pose_ros.core import kinematics
from hand_pose_ros.core.filters import anatomy
from hand_pose_ros.core.filters.config import AnatomyConfig, FilterConfig
from hand_pose_ros.core.filters.gates import motion_gate, PALM_GATE_JOINTS
from hand_pose_ros.core.filters.handedness import HandednessEstimator, has_evidence
from hand_pose_ros.core.filters.kalman import ConstantVelocityKalman
from hand_pose_ros.core.filters.one_euro import OneEuroFilter
from hand_pose_ros.core.filters.tracking import associate
from hand_pose_ros.core.skeleton import bone_lengths, NUM_JOINTS

_PALM_CENTER_JOINTS = np.array([0, 5, 9, 13, 17])
_MIN_SCORE_FOR_NOISE = 0.25
# Stamps are floats: a gap of exactly max_gap_s must not fail on rounding.
_STAMP_EPS_S = 1e-6
# Track ids are published as 16-bit numbers (``hand_id`` of the keypoint clouds): they
# wrap round after 65,536 tracks, which a node running for days can reach.
TRACK_ID_LIMIT = 1 << 16
# A hand whose palm joints are mostly rejected by the gates jumped as a whole.
_PALM_JUMP_FRACTION = 0.6


@dataclasses.dataclass
class Observation:
    """
    One detected hand.

    :param keypoints_xyz: (21, 3) keypoints, metres; NaN rows are missing joints.
    :param scores: (21,) confidences in [0, 1]; None means all 1.
    """

    keypoints_xyz: np.ndarray
    scores: np.ndarray = None

    def checked(self):
        """Return (keypoints (21, 3) float64, scores (21,) float64) or raise ValueError."""
        keypoints = np.asarray(self.keypoints_xyz, dtype=np.float64)
        if keypoints.shape != (NUM_JOINTS, 3):
            raise ValueError(f'Observation.keypoints_xyz must be (21, 3), got {keypoints.shape}')
        if self.scores is None:
            scores = np.ones(NUM_JOINTS)
        else:
            scores = np.asarray(self.scores, dtype=np.float64)
            if scores.shape != (NUM_JOINTS,):
                raise ValueError(f'Observation.scores must be (21,), got {scores.shape}')
        scores = np.where(np.isfinite(scores), np.clip(scores, 0.0, 1.0), 0.0)
        return keypoints, scores


@dataclasses.dataclass
class TrackedHand:
    """
    Filtered state of one tracked hand at one stamp.

    ``keypoints_xyz`` holds the last estimate for invalid joints (NaN if never observed).
    ``rejected`` marks observed joints that were not used as observed (anatomy or gates),
    ``repaired`` those moved by the anatomical repair, ``predicted_joints`` those filled by
    the motion model; ``predicted`` is True when the whole hand had no detection.
    ``joint_angles`` holds the angles of ``keypoints_xyz`` (``kinematics.ANGLE_NAMES``
    order, radians, for ``handedness``) when the pose checks measured them on exactly these
    keypoints, else None.
    """

    hand_id: int
    stamp_s: float
    keypoints_xyz: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    handedness: str
    handedness_confidence: float
    predicted: bool
    predicted_joints: np.ndarray
    rejected: np.ndarray
    repaired: np.ndarray
    joint_angles: np.ndarray = None


def _palm_of(points, mask):
    use = mask[_PALM_CENTER_JOINTS]
    if not np.any(use):
        return None
    return points[_PALM_CENTER_JOINTS[use]].mean(axis=0)


@dataclasses.dataclass
class _PoseVerdict:
    """
    Outcome of the pose checks and the configured action on one complete filtered pose.

    ``pose``, ``label``, ``config`` and ``calibrated`` are what it was computed from; ``stats``
    the counts it adds; ``keypoints`` (repaired), ``valid``, ``repaired`` and ``downgraded``
    (joints whose score takes ``repair_score_factor``) what it publishes; ``joint_angles``
    those of ``keypoints`` (None when the repair moved them).
    """

    pose: np.ndarray
    label: str
    config: AnatomyConfig
    calibrated: np.ndarray  # or None
    stats: collections.Counter
    keypoints: np.ndarray
    valid: np.ndarray
    repaired: np.ndarray
    downgraded: np.ndarray
    flagged: bool
    joint_angles: np.ndarray  # or None

    def matches(self, pose, label, config, calibrated):
        """Return whether this verdict was computed from these inputs."""
        if self.calibrated is None or calibrated is None:
            same_calibration = self.calibrated is calibrated
        else:
            same_calibration = np.array_equal(self.calibrated, calibrated)
        return (same_calibration and self.label == label and self.config == config
                and np.array_equal(self.pose, pose))


class _Track:
    """Filters and state of one tracked hand."""

    def __init__(self, hand_id, config):
        self.hand_id = hand_id
        self.kalman = ConstantVelocityKalman(config.kalman, NUM_JOINTS)
        self.smoother = OneEuroFilter(config.one_euro, NUM_JOINTS)
        self.handedness = HandednessEstimator(config.handedness)
        self.calibration = anatomy.BoneCalibration(
            config.anatomy.calibration_window, config.anatomy.calibration_min_frames)
        self.config = config
        self.last_accepted_s = np.full(NUM_JOINTS, -np.inf)
        self.consecutive_rejections = np.zeros(NUM_JOINTS, np.int64)
        self.output = np.full((NUM_JOINTS, 3), np.nan)
        self.scores = np.zeros(NUM_JOINTS)
        self.accepted_scores = np.zeros(NUM_JOINTS)
        self.last_stamp_s = None
        self.last_detection_s = None
        # Detections so far; confirmed (published) from tracking.min_detections on.
        self.detections = 0
        self.confirmed = False
        self._last_verdict = None

    def set_config(self, config):
        old = self.config
        self.config = config
        self.kalman.config = config.kalman
        self.smoother.config = config.one_euro
        self.handedness.config = config.handedness
        if config.smoother != old.smoother:
            self.smoother.reset()
        window = config.anatomy.calibration_window
        min_frames = config.anatomy.calibration_min_frames
        if (window, min_frames) != (self.calibration.window, self.calibration.min_frames):
            self.calibration = self.calibration.resized(window, min_frames)

    def palm_prediction(self, stamp_s, predicted):
        """
        Return the predicted palm centre and the association gate of this track.

        ``predicted`` is the (21, 3) Kalman prediction at stamp_s. The gate is
        tracking.gate_m plus the distance the palm can travel (gates.palm_max_speed_m_s)
        since the track's last detection; after a gap longer than max_gap_s the motion model
        is gone and the last palm centre is used.
        """
        palm = _palm_of(predicted, np.all(np.isfinite(predicted), axis=1))
        if palm is None:
            palm = _palm_of(self.output, np.all(np.isfinite(self.output), axis=1))
        gate = self.config.tracking.gate_m + self.config.gates.palm_max_speed_m_s * (
            stamp_s - self.last_detection_s)
        return (palm if palm is not None else np.full(3, np.nan)), gate

    def step(self, stamp_s, detection, stats, prediction=None):
        """
        Advance the track to stamp_s with a checked detection (or None) and return it.

        ``prediction`` is ``self.kalman.predict(stamp_s)`` when already computed (the state
        is unchanged until this step updates it).
        """
        cfg = self.config
        rejected = np.zeros(NUM_JOINTS, bool)
        if detection is None:
            keypoints = np.full((NUM_JOINTS, 3), np.nan)
            scores = np.zeros(NUM_JOINTS)
            present = np.zeros(NUM_JOINTS, bool)
        else:
            keypoints, scores, present = (a.copy() for a in detection)
            self.last_detection_s = stamp_s
            self.detections += 1
            if has_evidence(present):
                self.handedness.update(stamp_s, keypoints, present)
            rejected = self._check_observation(keypoints, present, stats)
            present &= ~rejected
        measurement_std = cfg.kalman.measurement_noise_m / np.clip(
            scores, _MIN_SCORE_FOR_NOISE, 1.0)
        accepted = present.copy()
        if self.last_stamp_s is not None and np.any(present):
            accepted = self._gate(stamp_s, keypoints, present, measurement_std, prediction,
                                  stats)
            rejected |= present & ~accepted
        self.kalman.update(stamp_s, keypoints, accepted, measurement_std)
        self.last_accepted_s[accepted] = stamp_s
        self.last_stamp_s = stamp_s

        gap = stamp_s - self.last_accepted_s
        filled = ~accepted & self.kalman.initialised & (gap <= cfg.max_gap_s + _STAMP_EPS_S)
        lost = ~accepted & ~filled & self.kalman.initialised
        self.kalman.reset(lost)
        self.smoother.reset(lost)
        valid = accepted | filled
        target = np.where(accepted[:, None], keypoints, self.kalman.position)
        if cfg.smoother == 'one_euro':
            smoothed = self.smoother.update(stamp_s, target, valid)
        elif cfg.smoother == 'kalman':
            smoothed = self.kalman.position
        else:
            smoothed = target
        self.output[valid] = smoothed[valid]
        self.accepted_scores[accepted] = scores[accepted]
        # Predicted joints lose confidence with the gap: half of it at max_gap_s.
        decay = 1.0 - 0.5 * np.clip(gap / max(cfg.max_gap_s, 1e-9), 0.0, 1.0)
        self.scores = np.where(valid, self.accepted_scores * np.where(accepted, 1.0, decay), 0.0)
        stats['predicted_joints'] += int(np.count_nonzero(filled))
        output, scores_out, valid, repaired, flagged, angles = self._check_output(valid, stats)
        stats['invalid_joints'] += int(np.count_nonzero(~valid))
        if (cfg.anatomy.calibrate and not flagged and np.all(accepted)
                and np.all(scores >= cfg.anatomy.calibration_min_score)):
            self.calibration.add(bone_lengths(keypoints))
        side, side_confidence = self.handedness.reported
        return TrackedHand(
            hand_id=self.hand_id, stamp_s=stamp_s, keypoints_xyz=output,
            scores=scores_out, valid=valid, handedness=side,
            handedness_confidence=side_confidence, predicted=detection is None,
            predicted_joints=filled, rejected=rejected, repaired=repaired,
            # Measured for the estimated side: of no use under another (assumed) one.
            joint_angles=angles if side == self.handedness.label else None)

    def _calibrated(self):
        return self.calibration.lengths_m if self.config.anatomy.calibrate else None

    def _check_observation(self, keypoints, present, stats):
        """Return the (21,) observed joints rejected by the bone checks (all: hand reject)."""
        cfg = self.config.anatomy
        blamed = np.zeros(NUM_JOINTS, bool)
        for reason, mask in anatomy.check_bones(
                cfg, keypoints, present, self._calibrated()).items():
            mask = mask & present
            stats[f'rejected_joints.{reason}'] += int(np.count_nonzero(mask))
            blamed |= mask
        if np.any(blamed) and cfg.action == 'reject_hand':
            stats['rejected_hands.anatomy'] += 1
            return present.copy()
        return blamed

    def _check_output(self, valid, stats):
        """
        Apply the pose checks and the configured action to the filtered output.

        :return: (keypoints, scores, valid, repaired, flagged, joint angles of the keypoints
            or None) to publish; the filter state itself is not changed by a repair.
        """
        output, scores = self.output.copy(), self.scores.copy()
        if not self.config.anatomy.enabled or not np.all(valid):
            return output, scores, valid, np.zeros(NUM_JOINTS, bool), False, None
        verdict = self._pose_verdict(output)
        stats.update(verdict.stats)
        scores = np.where(verdict.downgraded,
                          scores * self.config.anatomy.repair_score_factor, scores)
        angles = None if verdict.joint_angles is None else verdict.joint_angles.copy()
        return (verdict.keypoints.copy(), np.where(verdict.valid, scores, 0.0),
                verdict.valid.copy(), verdict.repaired.copy(), verdict.flagged, angles)

    def _pose_verdict(self, output):
        """
        Return the _PoseVerdict of a complete filtered pose.

        The verdict depends only on the pose, the handedness label, the calibrated bone
        lengths and the anatomy config, so the last one is reused while they are all
        unchanged (a track coasting at zero velocity keeps its output from frame to frame).
        """
        cfg = self.config.anatomy
        calibrated = self._calibrated()
        label = self.handedness.label
        last = self._last_verdict
        if last is not None and last.matches(output, label, cfg, calibrated):
            return last
        stats = collections.Counter()
        blamed = np.zeros(NUM_JOINTS, bool)
        angles = kinematics.finger_angles(output, label)  # shared by the checks and the repair
        for reason, mask in anatomy.check_pose(cfg, output, label, calibrated,
                                               angles).items():
            stats[f'implausible_joints.{reason}'] += int(np.count_nonzero(mask))
            blamed |= mask
        keypoints, valid = output, np.ones(NUM_JOINTS, bool)
        repaired, downgraded = np.zeros(NUM_JOINTS, bool), np.zeros(NUM_JOINTS, bool)
        flagged = bool(np.any(blamed))
        if flagged and cfg.action == 'reject_hand':
            stats['invalidated_hands.anatomy'] += 1
            valid[:] = False
        elif flagged and cfg.action == 'invalidate_joints':
            stats['invalidated_joints.anatomy'] += int(np.count_nonzero(blamed))
            valid &= ~blamed
        elif flagged:
            keypoints, repaired, unrepairable = anatomy.repair(
                cfg, output, blamed, label, calibrated, angles)
            downgraded = repaired | blamed
            stats['repaired_joints'] += int(np.count_nonzero(repaired))
            stats['invalidated_joints.anatomy'] += int(np.count_nonzero(unrepairable))
            valid &= ~unrepairable
        self._last_verdict = _PoseVerdict(
            pose=output, label=label, config=dataclasses.replace(cfg), calibrated=calibrated,
            stats=stats, keypoints=keypoints, valid=valid, repaired=repaired,
            downgraded=downgraded, flagged=flagged,
            joint_angles=angles.joint_angles if keypoints is output else None)
        return self._last_verdict

    def _gate(self, stamp_s, keypoints, present, measurement_std, prediction, stats):
        cfg = self.config.gates
        predicted, variance = (prediction if prediction is not None
                               else self.kalman.predict(stamp_s))
        dt = stamp_s - self.last_stamp_s
        accepted, reasons = motion_gate(cfg, dt, keypoints, present, predicted, variance,
                                        self.kalman.position, measurement_std)
        for reason, mask in reasons.items():
            stats[f'rejected_joints.{reason}'] += int(np.count_nonzero(mask))
        palm_known = present[PALM_GATE_JOINTS] & np.all(
            np.isfinite(predicted[PALM_GATE_JOINTS]), axis=1)
        palm_rejected = palm_known & ~accepted[PALM_GATE_JOINTS]
        if cfg.enabled and np.count_nonzero(palm_known) and (
                np.count_nonzero(palm_rejected) >= _PALM_JUMP_FRACTION * np.count_nonzero(
                    palm_known)):
            stats['rejected_hands.palm_jump'] += 1
            accepted = np.zeros(NUM_JOINTS, bool)
        rejected = present & ~accepted
        self.consecutive_rejections[rejected] += 1
        self.consecutive_rejections[~rejected] = 0
        reinit = rejected & (self.consecutive_rejections >= cfg.max_consecutive_rejections)
        if np.any(reinit):
            stats['reinitialised_joints'] += int(np.count_nonzero(reinit))
            self.kalman.reset(reinit)
            self.smoother.reset(reinit)
            self.consecutive_rejections[reinit] = 0
            accepted = accepted | reinit
        return accepted


class HandFilter:
    """
    Online filter for several hands (see the module docstring for the steps).

    ``stats`` is a collections.Counter for diagnostics: ``frames``, ``resets`` (total) and
    ``resets.<time_jump_back|stale_stream|manual>``, ``duplicate_stamps``, ``new_tracks``,
    ``dropped_tracks``, ``rejected_hands.<hand_length|anatomy|palm_jump|max_hands|no_palm>``,
    ``rejected_joints.<bone_length|bone_ratio|bone_calibrated|knuckle_breadth|acceleration|
    velocity|swap>``, ``implausible_joints.<bone_calibrated|bone_ratio|joint_angle|
    self_intersection>``, ``repaired_joints``, ``invalidated_joints.anatomy``,
    ``invalidated_hands.anatomy``, ``reinitialised_joints``, ``predicted_joints``,
    ``invalid_joints``.

    :param config: FilterConfig (validated here); default FilterConfig().
    """

    def __init__(self, config=None):
        self.config = (config if config is not None else FilterConfig()).validate()
        self.stats = collections.Counter()
        self._tracks = []
        self._next_id = 0
        self._last_stamp_s = None
        self._last_output = []
        self.repeated = False

    def reset(self):
        """Drop every track (ids keep increasing; calibration is lost)."""
        self._tracks = []
        self._last_stamp_s = None
        self._last_output = []
        self.stats['resets'] += 1
        self.stats['resets.manual'] += 1

    def _reset(self, reason):
        self._tracks = []
        self._last_stamp_s = None
        self.stats['resets'] += 1
        self.stats[f'resets.{reason}'] += 1

    def set_config(self, config):
        """Apply a new validated configuration, keeping tracks (and calibration) alive."""
        config = config.validate()
        self.config = config
        for track in self._tracks:
            track.set_config(config)
        if len(self._tracks) > config.tracking.max_hands:
            self._tracks.sort(key=lambda t: -(t.last_detection_s or -math.inf))
            self._tracks = self._tracks[:config.tracking.max_hands]

    @property
    def tracks(self):
        """Return the ids of the live tracks."""
        return [track.hand_id for track in self._tracks]

    def _new_track_id(self):
        """Return the next track id: counting up, wrapping, skipping the live tracks' ids."""
        live = set(self.tracks)
        while self._next_id in live:
            self._next_id = (self._next_id + 1) % TRACK_ID_LIMIT
        hand_id = self._next_id
        self._next_id = (self._next_id + 1) % TRACK_ID_LIMIT
        return hand_id

    def calibrated_bone_lengths(self, hand_id):
        """Return the (20,) calibrated bone lengths of a track, or None."""
        for track in self._tracks:
            if track.hand_id == hand_id:
                return track.calibration.lengths_m
        raise ValueError(f'no track with hand_id {hand_id}')

    def update(self, stamp_s, observations):
        """
        Filter the detections of one frame.

        :param stamp_s: frame stamp, seconds (message header time).
        :param observations: iterable of Observation.
        :return: list of TrackedHand sorted by hand_id. For a repeated stamp, the last
            output again, and :attr:`repeated` is True until the next update (outputs of
            that stamp went out already: a second TF of one stamp is an error to tf2).
        """
        stamp_s = float(stamp_s)
        if not math.isfinite(stamp_s):
            raise ValueError(f'stamp_s must be finite, got {stamp_s}')
        cfg = self.config
        self.repeated = False
        detections = self._checked(observations)
        if self._last_stamp_s is not None:
            if stamp_s < self._last_stamp_s:
                self._reset('time_jump_back')
            elif stamp_s == self._last_stamp_s:
                self.stats['duplicate_stamps'] += 1
                self.repeated = True
                return self._last_output
            elif stamp_s - self._last_stamp_s > cfg.stale_timeout_s:
                self._reset('stale_stream')
        self.stats['frames'] += 1
        self._last_stamp_s = stamp_s

        palms = []
        for keypoints, _, present in detections:
            palms.append(_palm_of(keypoints, present))
        # One Kalman prediction per track serves association and the motion gates.
        predictions = [track.kalman.predict(stamp_s) for track in self._tracks]
        palm_gates = [track.palm_prediction(stamp_s, predicted)
                      for track, (predicted, _) in zip(self._tracks, predictions)]
        track_palms = np.array([palm for palm, _ in palm_gates]).reshape(-1, 3)
        gates = np.array([gate for _, gate in palm_gates])
        pairs, unmatched = associate(track_palms, np.array(palms).reshape(-1, 3), gates)
        by_track = dict(pairs)
        outputs = []
        for index, track in enumerate(self._tracks):
            detection = detections[by_track[index]] if index in by_track else None
            outputs.append(track.step(stamp_s, detection, self.stats, predictions[index]))
        for d in unmatched:
            if len(self._tracks) >= cfg.tracking.max_hands:
                if not self._free_slot(stamp_s):
                    self.stats['rejected_hands.max_hands'] += 1
                    continue
                outputs = [o for o in outputs if o.hand_id in self.tracks]
            track = _Track(self._new_track_id(), cfg)
            self.stats['new_tracks'] += 1
            self._tracks.append(track)
            outputs.append(track.step(stamp_s, detections[d], self.stats))
        kept = []
        for track in self._tracks:
            if not track.confirmed and track.last_detection_s < stamp_s:
                self.stats['dropped_tentative_tracks'] += 1
            elif stamp_s - track.last_detection_s > cfg.stale_timeout_s:
                self.stats['dropped_tracks'] += 1
            else:
                track.confirmed |= track.detections >= cfg.tracking.min_detections
                kept.append(track)
        self._tracks = kept
        # Tracks not yet confirmed are followed but not published.
        live = {track.hand_id for track in kept if track.confirmed}
        self._last_output = sorted((o for o in outputs if o.hand_id in live),
                                   key=lambda o: o.hand_id)
        return self._last_output

    def _free_slot(self, stamp_s):
        """Drop the longest-lost track that is beyond max_gap_s; return whether one was."""
        lost = [t for t in self._tracks
                if stamp_s - t.last_detection_s > self.config.max_gap_s]
        if not lost:
            return False
        oldest = min(lost, key=lambda t: t.last_detection_s)
        self._tracks.remove(oldest)
        self.stats['dropped_tracks'] += 1
        return True

    def _checked(self, observations):
        """Return [(keypoints, scores, present)] of the plausible, most confident hands."""
        cfg = self.config
        checked = []
        for observation in observations:
            if not isinstance(observation, Observation):
                raise ValueError(f'expected Observation, got {type(observation).__name__}')
            keypoints, scores = observation.checked()
            present = np.all(np.isfinite(keypoints), axis=1) & (scores >= cfg.min_score)
            if not np.any(present[_PALM_CENTER_JOINTS]):
                self.stats['rejected_hands.no_palm'] += 1
                continue
            problems = anatomy.hand_level_problems(cfg.anatomy, keypoints, present)
            if problems:
                for problem in problems:
                    self.stats[f'rejected_hands.{problem}'] += 1
                continue
            checked.append((keypoints, scores, present))
        checked.sort(key=lambda d: -float(np.where(d[2], d[1], 0.0).mean()))
        for _ in checked[cfg.tracking.max_hands:]:
            self.stats['rejected_hands.max_hands'] += 1
        return checked[:cfg.tracking.max_hands]
