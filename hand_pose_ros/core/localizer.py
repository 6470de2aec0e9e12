"""
Depth hand localiser: find up to ``max_hands`` hand centres without ground truth.

The papers behind this package crop around given hand centres; a deployed estimator must
find hands itself. This localiser works on a strided (about 160 px wide) view of the depth
image:

1. Valid pixels within ``[min_depth_m, max_depth_m]``; pixels on the far side of a depth
   jump (``depth_jump_m`` plus a depth-dependent allowance for steep surfaces) are cut, so
   objects in front of a background separate into surfaces.
2. Cores and limbs: a morphological opening with a disc wider than an arm
   (``limb_radius_m``, two distance transforms on a grid of 2x2 pixel blocks) keeps the
   cores of large surfaces (torsos, tables, walls); what it removes are limbs (arms,
   hands, hands holding objects, small objects). Limbs too small to be a hand (speckle,
   flying pixels) are dropped. Arms enter from a core they touch, else from the image
   border.
3. Limb ends: a limb longer than a hand gives two candidates, the ends of its geodesic
   diameter (``geodesic_keep_m`` of path from each end): the end farthest from the entry
   and the end farthest from that one (the arm of a hand leaving the image, or a hand
   touching a body). Shorter limbs are candidates whole.
4. Centre: mean shift over the candidate's points, plus a fitted combination of offsets
   towards the limb's free end, the outline and the skew of the main axis (the joints'
   centroid lies towards the fingers from the densely seen palm), then a push of
   ``surface_to_center_m`` along the viewing ray (the joints lie behind the surface).
5. Score: a logistic score of the candidate's shape features (area, length, width,
   thickness, outline raggedness, arm end, depth, entry contact) and the depth behind the
   nearest candidate (a user's hands reach towards the camera); candidates are ranked by
   it, kept when the shape part alone passes ``min_score``, and a candidate within
   ``min_separation_m`` of a better one is dropped.

All limbs of an image, and then all its candidates, are measured together (sums over
runs of points, one shortest-path search per step for all arms), so the cost is a few
hundred array operations per image whatever the scene. Measured figures (detection
rate, centre error, time) are in the package README / the ``hand_pose_evaluate
--localizer-only`` command.
"""

from dataclasses import dataclass, replace
import math

import numpy as np
from scipy import ndimage

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz, xyz_from_uvd

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# Hand score weights for _hand_features plus the relative depth (see _scored): logistic fit
# on the candidates of 2,000 synthetic frames (default scenes seed 2000, single-hand scenes
# seed 2001; held-out evaluation uses seed 1000), positive within 50 mm of a hand.
_HAND_WEIGHTS = np.array([-2.812, 10.63, -5.574, -1.52, -0.43, 3.177, 9.858, -0.008, 0.571,
                          -4.984, -13.49, -1.161])

# Centre offset weights for _center_basis: least squares on the candidates within 80 mm of
# a hand in the same 2,000 synthetic frames (the ray weight is net of surface_to_center_m).
_CENTER_WEIGHTS = np.array([-0.06, 2.02, -0.15, -0.003, -0.434])


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
    :param min_area_m2: smallest metric area (projected surface) of a visible hand.
    :param max_area_m2: largest metric area of a hand (with a held object or the wrist).
    :param max_width_m: largest hand extent across its principal axis (a hand with spread
        fingers is about 0.2 m wide).
    :param hand_length_m: limbs longer than 1.15 times this are a hand with a forearm.
    :param geodesic_keep_m: path length kept back from the far end of an arm whose entry
        (image border, body) is known.
    :param limb_radius_m: surfaces are opened with a disc of this radius (wider than an
        arm); what the opening keeps are cores (torsos, tables, walls), the rest limbs.
    :param min_body_area_m2: smallest metric area of a core; smaller cores (a held ball,
        a fist seen from close) stay part of their limb.
    :param refine_radius_m: mean-shift radius for the centre refinement.
    :param refine_iterations: mean-shift iterations.
    :param surface_to_center_m: distance from the visible surface to the hand centre,
        along the viewing ray.
    :param min_separation_m: candidates closer than this to a better one are dropped.
    :param min_score: candidates scoring lower are dropped (0 keeps all).
    """

    min_depth_m: float = 0.15
    max_depth_m: float = 2.0
    target_width_px: int = 160
    depth_jump_m: float = 0.02
    # A third: the value the detection figures were measured with.
    max_slope: float = 1.0 / 3.0
    min_area_m2: float = 0.0012
    max_area_m2: float = 0.04
    max_width_m: float = 0.26
    hand_length_m: float = 0.15
    geodesic_keep_m: float = 0.16
    limb_radius_m: float = 0.06
    min_body_area_m2: float = 0.02
    refine_radius_m: float = 0.08
    refine_iterations: int = 3
    surface_to_center_m: float = 0.02
    min_separation_m: float = 0.05
    min_score: float = 0.1

    def __post_init__(self):
        if not 0 <= self.min_depth_m < self.max_depth_m:
            raise ValueError(f'localizer depth range must satisfy 0 <= min_depth_m < '
                             f'max_depth_m, got {self.min_depth_m}, {self.max_depth_m}')
        for name in ('depth_jump_m', 'min_area_m2', 'max_area_m2', 'max_width_m',
                     'hand_length_m', 'geodesic_keep_m', 'limb_radius_m', 'min_body_area_m2',
                     'refine_radius_m', 'max_slope'):
            if not getattr(self, name) > 0:
                raise ValueError(f'localizer {name} must be positive, got {getattr(self, name)}')
        if not 0 <= self.min_score < 1:
            raise ValueError(f'localizer min_score must be in [0, 1), got {self.min_score}')
        if int(self.target_width_px) < 1:
            raise ValueError(f'localizer target_width_px must be >= 1, got '
                             f'{self.target_width_px}')
        if self.refine_iterations < 0 or self.surface_to_center_m < 0 \
                or self.min_separation_m < 0:
            raise ValueError('localizer refine_iterations, surface_to_center_m and '
                             'min_separation_m must be >= 0')


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
    """Find hands in a depth image by depth-jump segmentation and limb ends (see module)."""

    def __init__(self, config=None):
        self.config = config if config is not None else LocalizerConfig()

    def with_config(self, config):
        """Return a localiser like this one with another :class:`LocalizerConfig`."""
        return DepthHandLocalizer(config)

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
        candidates = _scored(self.candidates(depth_m, intrinsics), self.config.min_score)
        candidates.sort(key=lambda c: (-c.score, c.center_xyz[2]))
        kept = []
        for candidate in candidates:
            # Two pieces of one hand (fingers cut off by a held object) report one hand.
            if all(np.linalg.norm(candidate.center_xyz - other.center_xyz)
                   > self.config.min_separation_m for other in kept):
                kept.append(candidate)
        return kept[:int(max_hands)]

    def candidates(self, depth_m, intrinsics):
        """
        Return every hand-like part of the image, unscored (``score`` 0, features set).

        Surfaces are split at depth jumps; parts thicker than an arm (``limb_radius_m``) of
        large surfaces (bodies, tables, walls) form cores, and the rest are limbs, each
        examined for a hand at its free end. All limbs, then all candidates, are measured
        together (sums per segment of points), so the cost barely grows with their number.
        """
        cfg = self.config
        stride = max(1, int(round(depth_m.shape[1] / cfg.target_width_px)))
        small = depth_m[::stride, ::stride].astype(np.float64)
        grid = _StridedGrid(small, intrinsics, stride)
        # NaN (invalid) compares False.
        valid = (small >= cfg.min_depth_m) & (small <= cfg.max_depth_m)
        depth = np.where(valid, small, np.nan)
        mask = valid & ~_far_side_of_jumps(depth, cfg.depth_jump_m,
                                           cfg.max_slope / grid.pitch_per_m)
        if not mask.any():
            return []
        # Surfaces smaller than a hand (speckle, flying pixels) have no core and form limbs
        # too small to be examined.
        core = self._cores(grid, mask)
        labels, count = ndimage.label(mask & ~core, structure=_FOUR_CONNECTED)
        if count == 0:
            return []
        flat = np.flatnonzero(labels)
        limb_of = labels.ravel()[flat]
        area = np.bincount(limb_of, grid.pixel_area(small.ravel()[flat]), count + 1)
        examined = area >= cfg.min_area_m2
        # Limb pixels (flat indices) grouped by limb in label order, row-major within one.
        keep = examined[limb_of]
        flat, limb_of = flat[keep], limb_of[keep]
        if len(flat) == 0:
            return []
        flat = flat[np.argsort(limb_of, kind='stable')]
        limbs = _Segments(np.bincount(limb_of)[examined[:np.max(limb_of) + 1]])
        # Arms enter from a body where they touch one, else from the image border (a
        # limb touching both is an arm from the body whose hand leaves the image).
        on_body = _touches(core, flat)
        from_body = np.logical_or.reduceat(on_body, limbs.starts)
        entry = np.where(limbs.expand(from_body), on_body, grid.image_border.ravel()[flat])
        return self._limb_hands(grid, flat, limbs, entry)

    def _cores(self, grid, mask):
        """
        Return the cores of large surfaces: what an opening by a limb-wide disc keeps.

        The opening keeps the parts of a surface thicker than an arm (``limb_radius_m``);
        cores smaller than ``min_body_area_m2`` (a hand holding a ball) stay limbs. It runs
        on 2x2 pixel blocks, a block being in when all four of its pixels are (so surfaces
        stay apart): the distance transforms are the dearest step, and an arm is still a
        few blocks wide at ``max_depth_m``. A core covers whole blocks.
        """
        cfg = self.config
        height, width = mask.shape[0] // 2 * 2, mask.shape[1] // 2 * 2
        # A coarse pixel is in when all four of its pixels are: surfaces stay apart.
        coarse = mask[0:height:2, 0:width:2] & mask[1:height:2, 0:width:2] \
            & mask[0:height:2, 1:width:2] & mask[1:height:2, 1:width:2]
        radius_px = cfg.limb_radius_m * grid.pitch_per_m / 2.0 \
            / np.where(coarse, grid.small[0:height:2, 0:width:2], np.inf)
        # Only blocks with their 8 neighbours in can lie farther than r >= sqrt(2) from
        # the background; the distance transform runs in their bounding box grown by the
        # largest radius (most of an image is background, and the transform's cost grows
        # with it), which holds the nearest background of every block nearer than that.
        inner = coarse.copy()
        if np.min(radius_px, initial=np.inf) >= math.sqrt(2.0):
            inner[1:-1, 1:-1] &= coarse[:-2, :-2] & coarse[:-2, 1:-1] & coarse[:-2, 2:] \
                & coarse[1:-1, :-2] & coarse[1:-1, 2:] & coarse[2:, :-2] & coarse[2:, 1:-1] \
                & coarse[2:, 2:]
        box = _box(inner, int(np.max(radius_px[inner], initial=0.0)) + 2)
        if box is None:
            return np.zeros_like(mask)
        thick = np.zeros_like(coarse)
        thick[box] = inner[box] & (ndimage.distance_transform_edt(coarse[box]) > radius_px[box])
        # Within the disc of a thick block, the block's own extent (half a block)
        # included; nothing lies farther than the largest disc from every thick block.
        box = _box(thick, int(np.max(radius_px[coarse]) + 1.5))
        if box is None:
            return np.zeros_like(mask)
        core = np.zeros_like(coarse)
        core[box] = coarse[box] & (ndimage.distance_transform_edt(~thick[box])
                                   <= radius_px[box] + 0.5)
        # Each block stands for four pixels of the mask, so cores can be labelled and
        # measured on the blocks.
        labels, count = ndimage.label(core, structure=_FOUR_CONNECTED)
        z2 = grid.small * grid.small
        area = grid.pixel_area(1.0) * (z2[0:height:2, 0:width:2] + z2[1:height:2, 0:width:2]
                                       + z2[0:height:2, 1:width:2] + z2[1:height:2, 1:width:2])
        body = np.bincount(labels.ravel(), area.ravel(), count + 1) >= cfg.min_body_area_m2
        body[0] = False
        full = np.zeros_like(mask)
        full[:height, :width].reshape(height // 2, 2, width // 2, 2)[...] = \
            body[labels][:, None, :, None]
        return full

    def _limb_hands(self, grid, flat, limbs, entry):
        """
        Return the hand candidates of all limbs: each limb itself, or its two ends.

        A limb longer than a hand is an arm, maybe with a hand at each end (a forearm
        reaching out of the image, an arm touching a body at the hand). Its ends are the
        two ends of its geodesic diameter: the point farthest along the limb from where it
        enters (``entry``; else from one end of its main axis), and the point farthest
        from that one. Each end's part within ``geodesic_keep_m`` is a candidate; the
        score, which sees how much of it touches the entry, decides.

        :param flat: (P,) flat strided-image indices of the limb pixels, grouped by limb.
        :param limbs: :class:`_Segments` of ``flat``, one per limb.
        :param entry: (P,) bool, whether each pixel lies where its arm may enter (a body
            the limb touches, else the image border).
        """
        cfg = self.config
        rows, cols = np.divmod(flat, grid.shape[1])
        xyz = grid.xyz(rows, cols)
        _, centred, _, vectors = _moments(xyz, limbs)
        along = np.sum(centred * limbs.expand(vectors[:, :, 2].T), axis=0)
        long = limbs.largest(along) - limbs.smallest(along) > cfg.hand_length_m * 1.15
        in_long = limbs.expand(long)
        # Candidates (points as indices into the limb pixels): whole short limbs, then the
        # ends of the long ones; end is NaN for a whole limb, else +1 for the end away from
        # a known entry, -1 the entry end, 0 when the entry is unknown.
        short = np.flatnonzero(~long)
        points = [np.flatnonzero(~in_long)]
        from_tip = [np.full(len(points[0]), np.inf)]
        counts, end = [limbs.counts[short]], [np.full(len(short), np.nan)]
        if long.any():
            arm = np.flatnonzero(in_long)
            arms = _Segments(limbs.counts[long])
            for keep, tip, side in _arm_ends(grid.shape, flat[arm], xyz[:, arm], along[arm],
                                             entry[arm], arms, cfg.geodesic_keep_m):
                points.append(arm[keep])
                from_tip.append(tip[keep])
                counts.append(np.add.reduceat(keep, arms.starts, dtype=np.intp))
                end.append(side)
        # Each candidate's outline (the cut off its arm included); the candidates of one
        # group never touch each other.
        edge = np.concatenate([_outline(grid.shape, flat[p]) for p in points])
        points = np.concatenate(points)
        return _hand_candidates(
            grid, rows[points], cols[points], xyz[:, points], entry[points], edge,
            np.concatenate(from_tip), np.concatenate(end), _Segments(np.concatenate(counts)),
            cfg)


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
        """Return the (3, N) points (x, y, z rows), metres, of strided pixels."""
        k = self.intrinsics
        z = self.small[rows, cols]
        x = (cols * self.stride - k.cx) * z / k.fx
        y = (rows * self.stride - k.cy) * z / k.fy
        return np.stack([x, y, z])

    def pixel_area(self, z):
        k = self.intrinsics
        return (self.stride * z) ** 2 / (k.fx * k.fy)


def _far_side_of_jumps(depth, jump_m, rise_per_m):
    """
    Return a mask of pixels on the far side of a depth discontinuity (NaN = no jump).

    A step counts as a jump when it exceeds ``jump_m`` plus what a steep surface rises over
    the pixel pitch, which grows with depth: ``jump_m + depth * rise_per_m`` (``rise_per_m``:
    the steepest slope times the pitch at 1 m).
    """
    far = np.zeros(depth.shape, dtype=bool)
    with np.errstate(invalid='ignore'):
        limit = jump_m + depth * rise_per_m
        dx = depth[:, 1:] - depth[:, :-1]
        dy = depth[1:, :] - depth[:-1, :]
        far[:, 1:] |= dx > limit[:, :-1]
        far[:, :-1] |= dx < -limit[:, 1:]
        far[1:, :] |= dy > limit[:-1, :]
        far[:-1, :] |= dy < -limit[1:, :]
    return far


class _Segments:
    """
    Consecutive runs of points (one run per limb or candidate), for sums per run.

    Point arrays hold the points along their last axis; per-run results likewise.

    :param counts: (K,) int, points per run, all > 0.
    """

    def __init__(self, counts):
        self.counts = np.asarray(counts, dtype=np.intp)
        self.starts = np.zeros(len(self.counts), dtype=np.intp)
        np.cumsum(self.counts[:-1], out=self.starts[1:])
        self.index = np.repeat(np.arange(len(self.counts)), self.counts)

    def expand(self, values):
        """Return per-run values (..., K) repeated for each point of the run (..., N)."""
        return np.take(values, self.index, axis=-1)

    def total(self, values):
        return np.add.reduceat(values, self.starts, axis=-1)

    def mean(self, values):
        return self.total(values) / self.counts

    def largest(self, values):
        return np.maximum.reduceat(values, self.starts, axis=-1)

    def smallest(self, values):
        return np.minimum.reduceat(values, self.starts, axis=-1)

    def first_largest(self, values):
        """Return, per run, the index (into all points) of its first largest value."""
        best = values == self.expand(self.largest(values))
        return np.minimum.reduceat(np.where(best, np.arange(len(values)), len(values)),
                                   self.starts)


# Entries of the upper triangle of a 3x3 matrix, and where each matrix entry is among them.
_UPPER_ROWS, _UPPER_COLS = np.triu_indices(3)
_SYMMETRIC = np.array([[0, 1, 2], [1, 3, 4], [2, 4, 5]])


def _moments(xyz, runs):
    """
    Return each run's mean, the centred points, and the eigen decomposition of its scatter.

    :param xyz: (3, N) points.
    :return: means (3, K), centred points (3, N), eigenvalues (K, 3) ascending,
        eigenvectors (K, 3, 3) in columns.
    """
    mean = runs.mean(xyz)
    centred = xyz - runs.expand(mean)
    scatter = runs.total(centred[_UPPER_ROWS] * centred[_UPPER_COLS]).T[:, _SYMMETRIC]
    values, vectors = np.linalg.eigh(scatter)
    return mean, centred, values, vectors


def _arm_ends(shape, flat, xyz, along, entry, arms, keep_m):
    """
    Return the two ends of every arm's geodesic diameter (shortest paths along the limb).

    One graph holds all arms; arms never touch, so one multi-source search per step
    measures each arm from its own sources.

    :return: two (keep (N,) bool, from_tip (N,) metres, side (K,)) tuples: the end
        farthest from the entry (side +1, or 0 when the entry is unknown) and the other.
    """
    from scipy.sparse.csgraph import dijkstra

    graph = _grid_graph(shape, flat, xyz)
    known = np.logical_or.reduceat(entry, arms.starts) \
        & ~np.logical_and.reduceat(entry, arms.starts)
    sources = np.where(arms.expand(known), entry, along == arms.expand(arms.smallest(along)))
    # An arm is one 4-connected component with sources: every point is reached.
    first = dijkstra(graph, directed=True, indices=np.flatnonzero(sources), min_only=True)
    second = dijkstra(graph, directed=True, indices=arms.first_largest(first), min_only=True)
    from_far_end = arms.expand(arms.largest(second)) - second
    side = known.astype(np.float64)
    return ((second <= keep_m, second, side), (from_far_end <= keep_m, from_far_end, -side))


def _padded_index(flat, width):
    """
    Return the flat indices of pixels in the image padded by one pixel on every side.

    In the padded image every pixel has four neighbours, at -1, +1 and -/+ (width + 2).
    """
    return flat + 2 * (flat // width) + width + 3


def _grid_graph(shape, flat, xyz):
    """
    Return the sparse graph of 4-connected pixels (flat indices), edges their 3D lengths.

    Both directions of each edge are stored (CSR built directly, rows in ``flat`` order),
    so shortest paths run on it as a directed graph without a transpose.
    """
    from scipy.sparse import csr_matrix

    height, width = shape
    index = np.full((height + 2) * (width + 2), -1, dtype=np.intp)
    padded = _padded_index(flat, width)
    index[padded] = np.arange(len(flat))
    # CSR lists each pixel's neighbours together: pixel-major order.
    neighbours = index[padded[:, None] + np.array([-width - 2, -1, 1, width + 2])]
    linked = neighbours >= 0
    ends = neighbours[linked]
    starts = np.flatnonzero(linked) >> 2
    x, y, z = xyz
    dx, dy, dz = x[ends] - x[starts], y[ends] - y[starts], z[ends] - z[starts]
    indptr = np.zeros(len(flat) + 1, dtype=np.intp)
    indptr[1:] = np.cumsum(linked.ravel())[3::4]
    return csr_matrix((np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6, ends, indptr),
                      shape=(len(flat),) * 2)


def _outline(shape, flat):
    """
    Return, per pixel of a set of blobs (flat indices), whether it lies on its blob's outline.

    Outside the image counts as blob, so the image border is no outline; blobs that touch
    count as one.
    """
    height, width = shape
    padded = np.ones((height + 2, width + 2), dtype=bool)
    padded[1:-1, 1:-1] = False
    at = _padded_index(flat, width)
    member = padded.ravel()
    member[at] = True
    return ~(member[at - 1] & member[at + 1] & member[at - width - 2] & member[at + width + 2])


def _box(mask, margin):
    """Return the slices of a mask's bounding box grown by ``margin`` (None: empty mask)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def _touches(mask, flat):
    """Return, per pixel (flat indices), whether it or a 4-neighbour lies in ``mask``."""
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    padded = padded.ravel()
    at = _padded_index(flat, width)
    return padded[at] | padded[at - 1] | padded[at + 1] | padded[at - width - 2] \
        | padded[at + width + 2]


def _hand_candidates(grid, rows, cols, xyz, entry, edge, from_tip, end, hands, cfg):
    """
    Return the candidates among point runs that can be hands, with their centres.

    Runs outside the hand's area or wider than a hand are dropped. The centre is the
    mean-shift centre plus ``_CENTER_WEIGHTS`` times the offsets of ``_center_basis``,
    pushed ``surface_to_center_m`` along the viewing ray.

    :param rows: (N,) strided rows of the points of all runs (cols likewise).
    :param xyz: (3, N) the points, metres.
    :param entry: (N,) bool, whether each point lies where its arm enters.
    :param edge: (N,) bool, whether each point lies on its run's outline.
    :param from_tip: (N,) path length from an arm's free end, metres (inf: a whole limb).
    :param end: (K,) NaN for a whole limb, else the arm end (see ``_hand_features``).
    :param hands: :class:`_Segments` of the points, one run per candidate.
    :return: list of :class:`HandCandidate`, in run order.
    """
    area = hands.total(grid.pixel_area(xyz[2]))
    mean, centred, spread, vectors = _moments(xyz, hands)
    # Extent across the main axis; 3.5 standard deviations ~ the full width of a
    # uniformly filled strip, without the cost of percentiles.
    width = 3.5 * np.sqrt(np.maximum(spread[:, 1], 0.0) / hands.counts)
    plausible = (area >= cfg.min_area_m2) & (area <= cfg.max_area_m2) & (width <= cfg.max_width_m)
    kept = np.flatnonzero(plausible)
    if len(kept) == 0:
        return []
    if len(kept) < len(area):
        chosen = hands.expand(plausible)
        rows, cols, entry, edge, from_tip = (values[chosen] for values in (
            rows, cols, entry, edge, from_tip))
        xyz, centred, mean = xyz[:, chosen], centred[:, chosen], mean[:, kept]
        area, end, spread, vectors = (values[kept] for values in (area, end, spread, vectors))
        hands = _Segments(hands.counts[kept])
    center = mean
    for _ in range(cfg.refine_iterations):
        offset = xyz - hands.expand(center)
        inside = np.sum(offset * offset, axis=0) <= cfg.refine_radius_m ** 2
        count = np.add.reduceat(inside, hands.starts, dtype=np.intp)
        center = np.where(count > 0, hands.total(xyz * inside) / np.maximum(count, 1), center)
    # The centred points along the main axis and the second one (vectors in columns).
    axes = np.take(vectors[:, :, :0:-1].transpose(1, 2, 0), hands.index, axis=-1)
    main, across = np.einsum('in,ijn->jn', centred, axes)
    # Per-candidate sums and extents, each in one pass.
    nearest = hands.smallest(from_tip)
    near_tip = from_tip <= hands.expand(nearest) + 0.05
    main2 = main * main
    sums = hands.total(np.concatenate([xyz * edge, xyz * near_tip, np.stack(
        [edge, near_tip, entry, main2, main2 * main]).astype(np.float64)]))
    extent = np.stack([main, across, cols, rows])
    largest, smallest = hands.largest(extent), hands.smallest(extent)
    offsets = _center_basis(sums, nearest, hands.counts, mean, center, vectors[:, :, 2].T)
    center = center + np.tensordot(_CENTER_WEIGHTS, offsets, axes=1)
    center = center + cfg.surface_to_center_m * center / np.linalg.norm(center, axis=0)
    # The correction can move the centre of a hand cut by the border out of the image; a
    # crop needs it inside, so it goes back to the border at its depth.
    k = grid.intrinsics
    uvd = uvd_from_xyz(center.T, k)
    uvd[:, 0] = np.clip(uvd[:, 0], 0.0, k.width - 1.0)
    uvd[:, 1] = np.clip(uvd[:, 1], 0.0, k.height - 1.0)
    center = xyz_from_uvd(uvd, k).T
    features = _hand_features(area, largest[:2] - smallest[:2], spread, hands.counts,
                              sums[6] / hands.counts, sums[8] / hands.counts, end, mean[2])
    centers = np.ascontiguousarray(center.T)
    u_min, v_min = smallest[2:] * grid.stride
    # A strided cell's pixels end at the image edge when its size is not a multiple.
    u_max = np.minimum(largest[2] * grid.stride + grid.stride - 1, k.width - 1)
    v_max = np.minimum(largest[3] * grid.stride + grid.stride - 1, k.height - 1)
    # The score needs every candidate of the image: see _scored.
    return [HandCandidate(center_xyz=centers[k], score=0.0,
                          bbox=(int(u_min[k]), int(v_min[k]), int(u_max[k]), int(v_max[k])),
                          area_m2=float(area[k]), num_points=int(hands.counts[k]),
                          arm_cut=bool(features[k, 7]), features=features[k])
            for k in range(len(kept))]


def _center_basis(sums, nearest, counts, mean, center, axis):
    """
    Return (5, 3, K) directions along which the joints' centroid lies off the surface centre.

    The visible surface is densest on the palm, while the joints' centroid lies towards
    the fingers: (towards the free end of an arm, towards the outline, along the skew of
    the main axis, along the viewing ray, mean-shift centre from the mean);
    ``_CENTER_WEIGHTS`` (a least-squares fit) combines them.

    :param sums: (11, K) per-candidate sums of the outline points (3), the points within
        5 cm of the nearest path length to the tip (3), and of: outline, near the tip,
        entry, (main axis coordinate)^2, its cube.
    :param nearest: (K,) nearest path length to an arm's tip (inf: a whole limb).
    :param axis: (3, K) main axis of each candidate.
    """
    def offset_of_mean(total, count):
        return np.where(count > 0, total / np.maximum(count, 1) - mean, 0.0)

    tip = np.where(np.isfinite(nearest), offset_of_mean(sums[3:6], sums[7]), 0.0)
    outline = offset_of_mean(sums[0:3], sums[6])
    skew = axis * (sums[10] / counts / np.maximum(sums[9] / counts, 1e-9))
    ray = center / np.linalg.norm(center, axis=0)
    return np.stack([tip, outline, skew, ray, center - mean])


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
    depth = np.array([candidate.center_xyz[2] for candidate in candidates])
    features = np.column_stack([np.array([candidate.features for candidate in candidates]),
                                (depth - depth.min()) * 10.0])
    shape_score = sigmoid(features[:, :-1] @ _HAND_WEIGHTS[:-1])
    score = sigmoid(features @ _HAND_WEIGHTS)
    return [replace(candidate, score=float(score[k]), features=features[k])
            for k, candidate in enumerate(candidates) if shape_score[k] >= min_score]


def sigmoid(z):
    """Return the logistic function of a number or array (clipped, never overflows)."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def logit(p):
    """Return the log-odds of a probability, clamped to [1e-3, 1 - 1e-3] first."""
    p = min(max(float(p), 1e-3), 1.0 - 1e-3)
    return math.log(p / (1.0 - p))


def _hand_features(area_m2, extents, spread, counts, outline, entry, end, depth_m):
    """
    Return the (K, 11) shape features of the hand candidates, in units near 1.

    (bias, area dm^2, area^2, length dm, width dm, thickness cm, outline fraction, arm cut,
    arm end (+1 away from the entry, -1 at it, 0 unknown),
    depth m, entry fraction); ``_HAND_WEIGHTS`` turns them into a logistic score.

    :param extents: (2, K) extents along the main and the second axis, metres.
    :param spread: (K, 3) scatter eigenvalues, counts: (K,) points; outline, entry: (K,)
        fractions of the points on the outline and on the arm's entry; end: (K,) NaN for a
        whole limb, else the arm end; depth_m: (K,) mean depths.
    """
    area_dm2 = area_m2 * 100.0
    arm_cut = ~np.isnan(end)
    return np.stack([np.ones(len(area_m2)), area_dm2, area_dm2 ** 2, extents[0] * 10.0,
                     extents[1] * 10.0, np.sqrt(np.maximum(spread[:, 0], 0.0) / counts) * 100.0,
                     outline, arm_cut.astype(np.float64), np.where(arm_cut, end, 0.0), depth_m,
                     entry], axis=1)
