"""
Depth hand localiser: find up to ``max_hands`` hand centres without ground truth.

The papers behind this package crop around given hand centres; a deployed estimator must
find hands itself. This localiser works on a strided (about 160 px wide) view of the depth
image:

1. Valid pixels within ``[min_depth_m, max_depth_m]``; pixels on the far side of a depth
   jump (``depth_jump_m`` plus a depth-dependent allowance for steep surfaces) are cut, so
   objects in front of a background separate. Objects too small to be a hand at any
   depth (speckle, flying pixels) are dropped.
2. Peeling: the closest remaining surface seeds the next blob: its whole object when that
   is at most hand-and-arm sized (``max_area_m2``), else the object's near-range band
   (``band_m`` deep). The blob is removed and the search repeats, so hands at different
   depths are all examined. Blobs continuing an examined blob across the band boundary
   (the rest of an arm, the torso behind it) are skipped. Where a band cuts an object, the
   cut marks the arm's entry (the arm continues towards a body there), like the image
   border. Once ``max_hands`` candidates exist, blobs starting more than
   ``search_depth_m`` behind the nearest are not examined.
3. Large blobs (torsos with arms, tables): a morphological opening with a disc wider than
   an arm (``limb_radius_m``) keeps the core; the limbs it removes enter from the core, and
   the hand is the part of a limb geodesically farthest from it.
4. Hand / forearm separation of a free blob longer than a hand: its two ends along the
   principal axis are scored (outline raggedness from fingers, width, thickness, depth,
   image-border or band-cut contact, weights from a logistic fit on synthetic frames); an
   arm entering at one end only decides alone. The hand is the part within
   ``hand_keep_m`` of the chosen end.
5. Centre: mean shift over the hand points, then a push of ``surface_to_center_m`` along
   the viewing ray (the joints lie inside the hand, behind the visible surface).
6. Score: a logistic score of the hand's shape features (area, length, width, thickness,
   outline raggedness, depth, border contact) and the depth behind the nearest candidate
   (a user's hands reach towards the camera); candidates are ranked by it and kept when
   the shape part alone passes ``min_score``.

Measured figures (detection rate, centre error, time) are in the package README / the
``hand_pose_evaluate --localizer-only`` command.
"""

from dataclasses import dataclass, replace
import math

import numpy as np
from scipy import ndimage

from hand_pose_ros.core.camera import CameraIntrinsics

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# Hand-end score weights for (silhouette fraction, middle spread m, smallest spread m,
# image-border fraction, mean depth m); see DepthHandLocalizer._end_features.
_END_WEIGHTS = np.array([9.4, 51.0, 283.0, -2.0, -13.3])
# Hand score weights for _hand_features plus the relative depth (see _scored): logistic fit
# on 1,100 synthetic single-hand frames (seeds 2000 and 2001; held-out evaluation uses 1000).
_HAND_WEIGHTS = np.array([-4.527, 15.938, -8.448, -2.464, 0.836, 1.903, 12.814, 0.262, -6.462,
                          -4.874, -1.141])


@dataclass(frozen=True)
class LocalizerConfig:
    """
    Tuning of :class:`DepthHandLocalizer` (metres unless named otherwise).

    :param min_depth_m: nearest depth considered.
    :param max_depth_m: farthest depth considered.
    :param target_width_px: the image is strided down to about this width for speed.
    :param depth_jump_m: depth step between neighbours that separates two surfaces, on
        top of ``max_slope`` times the lateral pixel pitch.
    :param max_slope: steepest surface (depth change per lateral distance) kept connected.
    :param band_m: depth of the near-range band grown from the closest surface.
    :param min_area_m2: smallest metric area (projected surface) of a visible hand.
    :param max_area_m2: largest metric area of a blob (a hand with its forearm and upper
        arm seen side-on); larger blobs (tables, walls, torsos) are rejected.
    :param max_width_m: largest blob extent across its principal axis (a hand with spread
        fingers is about 0.2 m wide; tables, walls and torsos are wider).
    :param hand_length_m: blobs longer than 1.15 times this are a hand with a forearm.
    :param hand_keep_m: extent kept from the hand end of an elongated blob.
    :param end_segment_m: length of each blob end compared when choosing the hand end.
    :param entry_fraction: fraction of an end's points on the image border that marks it
        as the arm's entry when the other end does not touch the border.
    :param geodesic_keep_m: path length kept back from the far end of an arm whose entry
        (image border, body) is known.
    :param limb_radius_m: blobs too large for a hand and arm are opened with a disc of this
        radius; the limbs (arms) the opening removes are searched for hands.
    :param refine_radius_m: mean-shift radius for the centre refinement.
    :param refine_iterations: mean-shift iterations.
    :param surface_to_center_m: distance from the visible surface to the hand centre,
        along the viewing ray.
    :param max_iterations: most blobs examined per image.
    :param extra_candidates: candidates gathered beyond ``max_hands`` before ranking.
    :param search_depth_m: once ``max_hands`` candidates are found, blobs starting farther
        than this behind the nearest are not examined (the score's relative-depth term
        ranks them out anyway).
    :param min_score: candidates scoring lower are dropped (0 keeps all).
    """

    min_depth_m: float = 0.15
    max_depth_m: float = 2.0
    target_width_px: int = 160
    depth_jump_m: float = 0.02
    max_slope: float = 3.0
    band_m: float = 0.25
    min_area_m2: float = 0.0012
    max_area_m2: float = 0.08
    max_width_m: float = 0.26
    hand_length_m: float = 0.15
    hand_keep_m: float = 0.10
    end_segment_m: float = 0.08
    geodesic_keep_m: float = 0.16
    entry_fraction: float = 0.05
    limb_radius_m: float = 0.06
    refine_radius_m: float = 0.08
    refine_iterations: int = 3
    surface_to_center_m: float = 0.02
    max_iterations: int = 10
    extra_candidates: int = 3
    search_depth_m: float = 0.5
    min_score: float = 0.05

    def __post_init__(self):
        if not 0 <= self.min_depth_m < self.max_depth_m:
            raise ValueError(f'localizer depth range must satisfy 0 <= min_depth_m < '
                             f'max_depth_m, got {self.min_depth_m}, {self.max_depth_m}')
        for name in ('depth_jump_m', 'band_m', 'min_area_m2', 'max_area_m2', 'max_width_m',
                     'hand_length_m', 'hand_keep_m', 'end_segment_m', 'geodesic_keep_m',
                     'limb_radius_m', 'search_depth_m', 'refine_radius_m', 'max_slope'):
            if not getattr(self, name) > 0:
                raise ValueError(f'localizer {name} must be positive, got {getattr(self, name)}')
        if not 0 <= self.min_score < 1:
            raise ValueError(f'localizer min_score must be in [0, 1), got {self.min_score}')
        if not 0 < self.entry_fraction <= 1:
            raise ValueError('localizer entry_fraction must be in (0, 1]')
        if self.extra_candidates < 0:
            raise ValueError('localizer extra_candidates must be >= 0')
        for name in ('target_width_px', 'max_iterations'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'localizer {name} must be >= 1, got {getattr(self, name)}')
        if self.refine_iterations < 0 or self.surface_to_center_m < 0:
            raise ValueError('localizer refine_iterations and surface_to_center_m must be >= 0')


@dataclass(frozen=True)
class HandCandidate:
    """
    One hand found by the localiser.

    :param center_xyz: (3,) hand centre, metres, camera optical frame.
    :param score: plausibility in [0, 1] (size and shape against a hand's).
    :param bbox: (u_min, v_min, u_max, v_max) full-image pixels of the hand points.
    :param area_m2: metric projected area of the hand points.
    :param num_points: hand pixels found in the strided image.
    :param arm_cut: whether a forearm was cut off the blob.
    :param features: the shape features behind ``score`` (see ``_hand_features``).
    """

    center_xyz: np.ndarray
    score: float
    bbox: tuple
    area_m2: float
    num_points: int
    arm_cut: bool
    features: np.ndarray = None


class DepthHandLocalizer:
    """Find hands in a depth image by near-range segmentation (see module docstring)."""

    def __init__(self, config=None):
        self.config = config if config is not None else LocalizerConfig()

    def locate(self, depth_m, intrinsics, max_hands=2):
        """
        Return up to ``max_hands`` hand candidates, the most plausible first.

        :param depth_m: (H, W) float32 metres, NaN invalid (see ``camera.depth_to_metres``).
        :param intrinsics: :class:`CameraIntrinsics` of the image.
        :param max_hands: most candidates returned.
        :return: list of :class:`HandCandidate`, possibly empty.
        """
        depth_m = np.asarray(depth_m)
        if depth_m.ndim != 2 or depth_m.dtype not in (np.float32, np.float64):
            raise ValueError(f'localizer expects (H, W) float metres, got shape '
                             f'{depth_m.shape} dtype {depth_m.dtype}')
        intrinsics.check_image(depth_m)
        if int(max_hands) < 1:
            return []
        cfg = self.config
        stride = max(1, int(round(depth_m.shape[1] / cfg.target_width_px)))
        small = depth_m[::stride, ::stride].astype(np.float64)
        grid = _StridedGrid(small, intrinsics, stride)
        with np.errstate(invalid='ignore'):
            valid = (small >= cfg.min_depth_m) & (small <= cfg.max_depth_m)
        usable = valid & ~_far_side_of_jumps(np.where(valid, small, np.nan), cfg.depth_jump_m,
                                             cfg.max_slope * grid.pitch_per_m)
        remaining = usable.copy()
        taken = np.zeros_like(usable)
        objects, _ = ndimage.label(usable, structure=_FOUR_CONNECTED)
        # Objects with fewer pixels than the smallest hand at the farthest depth (speckle,
        # flying pixels) never become blobs.
        min_pixels = cfg.min_area_m2 / grid.pixel_area(cfg.max_depth_m)
        too_small = np.bincount(objects.ravel()) < min_pixels
        too_small[0] = False
        remaining &= ~too_small[objects]
        candidates = []
        nearest = np.inf
        # Look a little past max_hands: a nearer hand-sized object must not crowd out a hand
        # that scores better.
        for _ in range(cfg.max_iterations):
            if len(candidates) >= max_hands + cfg.extra_candidates or not remaining.any():
                break
            blob, cut, near = self._next_blob(grid, remaining, objects)
            if len(candidates) >= max_hands and near > nearest + cfg.search_depth_m:
                break  # far behind the hands found already: scores too low to matter
            remaining &= ~blob
            continues_taken = _touches(blob, taken, small, cfg.depth_jump_m)
            taken |= blob
            if not continues_taken:
                candidates.extend(self._candidates(grid, blob, cut))
                nearest = min((c.center_xyz[2] for c in candidates), default=np.inf)
        candidates = _scored(candidates, cfg.min_score)
        candidates.sort(key=lambda c: (-c.score, c.center_xyz[2]))
        return candidates[:max_hands]

    def _next_blob(self, grid, remaining, objects):
        """
        Return the next blob and where it was cut from the rest of its object.

        The blob is the nearest object, or its near band when the object is too big; the
        cut (blob pixels next to the object's part beyond the band) marks where a limb
        continues towards a body: the arm's entry, not the hand.

        :param objects: (h, w) labels of the usable pixels' connected components.
        :return: (blob, cut, depth): (h, w) bool masks and the blob's nearest depth.
        """
        masked = np.where(remaining, grid.small, np.inf)
        seed = np.unravel_index(np.argmin(masked), masked.shape)
        component = (objects == objects[seed]) & remaining
        if grid.pixel_area(grid.small[component]).sum() <= self.config.max_area_m2:
            return component, np.zeros_like(component), masked[seed]
        band = component & (masked <= masked[seed] + self.config.band_m)
        labels, _ = ndimage.label(band, structure=_FOUR_CONNECTED)
        blob = labels == labels[seed]
        return blob, blob & _dilate(component & ~band), masked[seed]

    def _candidates(self, grid, blob, cut):
        """
        Return the hand candidates of a blob: itself, or the limbs of a large blob.

        :param cut: (h, w) bool, where the blob continues into a farther part of its object.
        """
        rows, cols = np.nonzero(blob)
        xyz = grid.xyz(rows, cols)
        area = grid.pixel_area(xyz[:, 2])
        if area.sum() < self.config.min_area_m2:
            return []
        if area.sum() <= self.config.max_area_m2:
            candidate = self._hand(grid, rows, cols, xyz, area, grid.image_border | cut,
                                   False)
            if candidate is not None:
                return [candidate]
        return self._limb_hands(grid, blob, float(np.median(xyz[:, 2])))

    def _limb_hands(self, grid, blob, depth_m):
        """
        Find hands at the ends of limbs sticking out of a large blob (torso, table).

        A morphological opening with a disc wider than an arm keeps the blob's core; what
        the opening removes are limbs, which enter from the core (their arm end).
        """
        cfg = self.config
        radius_px = cfg.limb_radius_m * grid.pitch_per_m / depth_m
        if radius_px < 1.5:
            return []
        box = ndimage.find_objects(blob.astype(np.int8))[0]
        pad = int(np.ceil(radius_px)) + 1
        box = tuple(slice(max(0, b.start - pad), b.stop + pad) for b in box)
        local = blob[box]
        inside = ndimage.distance_transform_edt(local)
        core = ndimage.distance_transform_edt(inside <= radius_px) <= radius_px + 1.0
        limbs = local & ~core
        labels, count = ndimage.label(limbs, structure=_FOUR_CONNECTED)
        entry = np.zeros(grid.shape, dtype=bool)
        entry[box] = _dilate(_dilate(core & local))
        entry |= grid.image_border
        hands = []
        offset = np.array([box[0].start, box[1].start])
        for index in range(1, count + 1):
            rows, cols = np.nonzero(labels == index)
            rows, cols = rows + offset[0], cols + offset[1]
            xyz = grid.xyz(rows, cols)
            area = grid.pixel_area(xyz[:, 2])
            if cfg.min_area_m2 <= area.sum() <= cfg.max_area_m2:
                candidate = self._hand(grid, rows, cols, xyz, area, entry, True)
                if candidate is not None:
                    hands.append(candidate)
        return hands

    def _hand(self, grid, rows, cols, xyz, area, entry, attached):
        """
        Return the hand of a hand-sized blob (points given), or None when it is no hand.

        :param entry: (h, w) bool mask of where an arm may enter (image border, a body).
        :param attached: whether the blob is a limb known to enter at ``entry`` (then the
            hand is the part farthest along the limb); else the ends are scored.
        """
        cfg = self.config
        centred = xyz - xyz.mean(axis=0)
        # Principal axes of the blob (3x3 covariance: cheap).
        _, vectors = np.linalg.eigh(centred.T @ centred)
        along = centred @ vectors[:, 2]
        arm_cut = np.ptp(along) > cfg.hand_length_m * 1.15
        entered = entry[rows, cols]
        if arm_cut and attached and entered.sum() >= 2:
            # The arm enters here: the hand is the part geodesically farthest from it.
            distance = _geodesic_distance(grid.shape, rows, cols, xyz, entered)
            keep = np.isfinite(distance)
            keep &= distance >= np.max(distance[keep]) - cfg.geodesic_keep_m
        elif arm_cut:
            keep = self._hand_end(grid, rows, cols, xyz, along, entry)
        if arm_cut:
            rows, cols, xyz, area = rows[keep], cols[keep], xyz[keep], area[keep]
            if area.sum() < cfg.min_area_m2:
                return None
            centred = xyz - xyz.mean(axis=0)
            _, vectors = np.linalg.eigh(centred.T @ centred)
        # Extent across the main axis; 3.5 standard deviations ~ the full width of a
        # uniformly filled strip, without the cost of percentiles.
        if 3.5 * np.std(centred @ vectors[:, 1]) > cfg.max_width_m:
            return None
        center = _mean_shift(xyz, xyz.mean(axis=0), cfg.refine_radius_m, cfg.refine_iterations)
        center = center + cfg.surface_to_center_m * center / np.linalg.norm(center)
        hand_area = float(area.sum())
        features = _hand_features(grid, rows, cols, xyz, hand_area, vectors, arm_cut, entry)
        u_min, v_min = grid.full_uv(cols.min(), rows.min())
        u_max, v_max = grid.full_uv(cols.max(), rows.max())
        # The score needs every candidate of the image: see _scored.
        return HandCandidate(center_xyz=center, score=0.0,
                             bbox=(u_min, v_min, u_max + grid.stride - 1, v_max + grid.stride - 1),
                             area_m2=hand_area, num_points=int(len(rows)), arm_cut=bool(arm_cut),
                             features=features)

    def _hand_end(self, grid, rows, cols, xyz, along, entry):
        """Return a mask of the blob points within ``hand_keep_m`` of the hand end."""
        cfg = self.config
        edge = grid.edge_pixels(rows, cols)
        ends = []
        for sign, extreme in ((1.0, np.min(along)), (-1.0, np.max(along))):
            near_end = sign * (along - extreme) < cfg.end_segment_m
            entering = float(np.mean(entry[rows[near_end], cols[near_end]]))
            features = self._end_features(xyz[near_end], edge[near_end], entering)
            # An arm entering at one end only (cut by the image border) decides alone.
            ends.append((entering == 0.0, float(_END_WEIGHTS @ features), entering, sign,
                         extreme))
        if ends[0][0] != ends[1][0] and max(ends[0][2], ends[1][2]) >= cfg.entry_fraction:
            _, _, _, sign, extreme = max(ends, key=lambda end: end[0])
        else:
            _, _, _, sign, extreme = max(ends, key=lambda end: end[1])
        return sign * (along - extreme) <= cfg.hand_keep_m

    @staticmethod
    def _end_features(xyz, edge, entry_fraction):
        """
        Return the features scoring how much a blob end looks like a hand, not a forearm.

        Fingers give a ragged outline (many silhouette pixels per area) and a wider, less
        flat end; the arm enters from the image border or a body and is usually farther
        away. The weights (``_END_WEIGHTS``) come from a logistic fit on 800 synthetic frames
        (seeds 2000 and 2001; held-out evaluation uses seed 1000).
        """
        centred = xyz - xyz.mean(axis=0)
        variances = np.linalg.eigvalsh(centred.T @ centred / max(len(xyz), 1))
        spread = np.sqrt(np.maximum(variances, 0.0))
        return np.array([np.mean(edge), spread[1], spread[0], entry_fraction,
                         np.mean(xyz[:, 2])])


class _StridedGrid:
    """Geometry of a strided view of a depth image (pixel (r, c) = full (r*s, c*s))."""

    def __init__(self, small, intrinsics: CameraIntrinsics, stride):
        self.small = small
        self.intrinsics = intrinsics
        self.stride = stride
        self.shape = small.shape
        # Strided pixels per metre of lateral extent at 1 m depth.
        self.pitch_per_m = math.sqrt(intrinsics.fx * intrinsics.fy) / stride
        margin = 2
        self.image_border = np.ones(self.shape, dtype=bool)
        self.image_border[margin:-margin, margin:-margin] = False

    def xyz(self, rows, cols):
        k = self.intrinsics
        z = self.small[rows, cols]
        x = (cols * self.stride - k.cx) * z / k.fx
        y = (rows * self.stride - k.cy) * z / k.fy
        return np.stack([x, y, z], axis=-1)

    def pixel_area(self, z):
        k = self.intrinsics
        return (self.stride * z) ** 2 / (k.fx * k.fy)

    def full_uv(self, col, row):
        return int(col * self.stride), int(row * self.stride)

    def edge_pixels(self, rows, cols):
        """Return, per blob pixel, whether it lies on the blob's outline (not the image's)."""
        # Work in the blob's bounding box plus one pixel; outside the image counts as blob,
        # so the image border is no outline.
        r0, c0 = rows.min() - 1, cols.min() - 1
        height, width = rows.max() - r0 + 2, cols.max() - c0 + 2
        grid_rows = np.arange(r0, r0 + height)[:, None]
        grid_cols = np.arange(c0, c0 + width)[None, :]
        mask = (grid_rows < 0) | (grid_rows >= self.shape[0]) | (grid_cols < 0) \
            | (grid_cols >= self.shape[1])
        mask[rows - r0, cols - c0] = True
        inner = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2]
                 & mask[1:-1, 2:])
        return ~inner[rows - r0 - 1, cols - c0 - 1]


def _far_side_of_jumps(depth, jump_m, slope_per_m):
    """
    Return a mask of pixels on the far side of a depth discontinuity (NaN = no jump).

    A step counts as a jump when it exceeds ``jump_m`` plus what a steep surface rises over
    the pixel pitch (which grows with depth): ``jump_m + depth / slope_per_m``.
    """
    far = np.zeros(depth.shape, dtype=bool)
    with np.errstate(invalid='ignore'):
        limit = jump_m + depth / slope_per_m
        dx = depth[:, 1:] - depth[:, :-1]
        dy = depth[1:, :] - depth[:-1, :]
        far[:, 1:] |= dx > limit[:, :-1]
        far[:, :-1] |= dx < -limit[:, 1:]
        far[1:, :] |= dy > limit[:-1, :]
        far[:-1, :] |= dy < -limit[1:, :]
    return far


def _geodesic_distance(shape, rows, cols, xyz, sources):
    """
    Return each blob point's shortest 3D path length (metres) to the source points.

    Paths run between 4-connected blob pixels; unreachable points get inf.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    index = np.full(shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    starts, ends = [], []
    for d_row, d_col in ((0, 1), (1, 0)):
        r2, c2 = rows + d_row, cols + d_col
        inside = (r2 < shape[0]) & (c2 < shape[1])
        other = np.full(len(rows), -1, dtype=np.int64)
        other[inside] = index[r2[inside], c2[inside]]
        linked = other >= 0
        starts.append(np.nonzero(linked)[0])
        ends.append(other[linked])
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    weights = np.linalg.norm(xyz[starts] - xyz[ends], axis=1) + 1e-6
    graph = coo_matrix((weights, (starts, ends)), shape=(len(rows), len(rows))).tocsr()
    return dijkstra(graph, directed=False, indices=np.nonzero(sources)[0], min_only=True)


def _dilate(mask):
    """Return a 4-connected dilation of a bool mask by one pixel (cheaper than ndimage)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _touches(blob, taken, depth, jump_m):
    """Return whether ``blob`` continues a taken region (adjacent and depth-continuous)."""
    if not taken.any():
        return False
    ring = _dilate(blob) & taken
    if not ring.any():
        return False
    # Depth of the taken neighbours against the blob's depth right next to them.
    boundary = _dilate(ring) & blob
    return bool(abs(np.median(depth[ring]) - np.median(depth[boundary])) < 2 * jump_m)


def _mean_shift(points, start, radius, iterations):
    center = start
    for _ in range(iterations):
        inside = np.sum((points - center) ** 2, axis=1) <= radius ** 2
        if not inside.any():
            break
        center = points[inside].mean(axis=0)
    return center


def _scored(candidates, min_score):
    """
    Return the plausible candidates with their scores, from shape and relative depth.

    A user's hands are the nearest things reaching towards the camera: each candidate's
    depth behind the nearest candidate (dm) joins its shape features (``_hand_features``)
    in the logistic score that ranks them. Plausibility (``min_score``) is judged on the
    shape alone, so a second hand well behind the first is kept.
    """
    if not candidates:
        return []
    nearest = min(c.center_xyz[2] for c in candidates)
    scored = []
    for candidate in candidates:
        behind = (candidate.center_xyz[2] - nearest) * 10.0
        features = np.append(candidate.features, behind)
        logit = float(_HAND_WEIGHTS @ features)
        if 1.0 / (1.0 + math.exp(-(logit - _HAND_WEIGHTS[-1] * behind))) >= min_score:
            scored.append(replace(candidate, score=1.0 / (1.0 + math.exp(-logit)),
                                  features=features))
    return scored


def _hand_features(grid, rows, cols, xyz, area_m2, vectors, arm_cut, entry):
    """
    Return the shape features of a hand candidate, in units near 1.

    (bias, area dm^2, area^2, length dm, width dm, thickness cm, outline fraction, arm cut,
    depth m, entry fraction); ``_HAND_WEIGHTS`` turns them into a logistic score.
    """
    centred = xyz - xyz.mean(axis=0)
    spans = np.ptp(centred @ vectors, axis=0)
    area_dm2 = area_m2 * 100.0
    return np.array([1.0, area_dm2, area_dm2 ** 2, spans[2] * 10.0, spans[1] * 10.0,
                     np.std(centred @ vectors[:, 0]) * 100.0,
                     float(np.mean(grid.edge_pixels(rows, cols))), float(arm_cut),
                     float(np.mean(xyz[:, 2])), float(np.mean(entry[rows, cols]))])
