"""
Exact ray casting of simple primitives into a z-buffer.

Rays leave the camera centre through pixel centres at integer pixel coordinates (u, v), with
direction d = ((u - cx) / fx, (v - cy) / fy, 1): a hit at ray parameter t lies at depth z = t.
Each primitive is intersected only inside its projected screen-space bounding box; ray
components are kept separable ((1, w) and (h, 1) arrays) so per-pixel work is a few
broadcast numpy operations. Round cones are intersected in batches: each cone over its own
box, padded to the batch's window size, so a whole hand takes a few numpy passes with little
padding. Primitives: round cones (tapered capsules: the convex hull of two spheres, exact as
two spheres plus the tangent frustum; spheres and capsules are special cases), oriented
boxes, capped cylinders and planes.
"""

from dataclasses import dataclass

import numpy as np

from hand_pose_ros.core.rotations import cross

# Geometry nearer than this to the camera plane gets a full-image bounding box.
NEAR_PLANE_M = 0.01


@dataclass(frozen=True)
class RoundCone:
    """Convex hull of two spheres (a tapered capsule); equal radii give a capsule."""

    start: tuple
    end: tuple
    radius_start: float
    radius_end: float


@dataclass(frozen=True)
class Sphere:
    """A sphere."""

    center: tuple
    radius: float


@dataclass(frozen=True)
class Box:
    """Oriented box: ``rotation`` columns are the box axes, ``half_size`` their half lengths."""

    center: tuple
    rotation: np.ndarray
    half_size: tuple


@dataclass(frozen=True)
class Cylinder:
    """Capped cylinder along unit ``axis`` through ``center``."""

    center: tuple
    axis: tuple
    radius: float
    half_length: float


@dataclass(frozen=True)
class Plane:
    """Infinite plane through ``point`` with unit ``normal``."""

    point: tuple
    normal: tuple


def ray_grid(intrinsics, dtype=np.float32):
    """Return the separable ray components: dx (1, W), dy (H, 1)."""
    dx = (np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    dy = (np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    return dx.astype(dtype)[None, :], dy.astype(dtype)[:, None]


def _screen_boxes(corners, intrinsics):
    """Return (N, 4) int pixel boxes [u0, u1, v0, v1) covering (N, K, 3) corner sets."""
    z = corners[..., 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        u = intrinsics.fx * corners[..., 0] / z + intrinsics.cx
        v = intrinsics.fy * corners[..., 1] / z + intrinsics.cy
    near = z.min(axis=1) <= NEAR_PLANE_M
    boxes = np.stack([np.floor(u.min(axis=1)), np.ceil(u.max(axis=1)) + 1,
                      np.floor(v.min(axis=1)), np.ceil(v.max(axis=1)) + 1], axis=1)
    boxes[near] = [0, intrinsics.width, 0, intrinsics.height]
    limits = np.array([intrinsics.width, intrinsics.width, intrinsics.height, intrinsics.height])
    boxes = np.clip(boxes, 0, limits)
    return boxes.astype(np.int64), near


def _sphere_extents(centers, radii, intrinsics):
    """
    Return (N, 4) exact silhouette extents [u_min, u_max, v_min, v_max] of spheres, and near.

    The u extent is bounded by the two planes through the camera's y axis tangent to the
    sphere (at angles theta +- asin(r / sqrt(x^2 + z^2)) in the x-z plane); likewise for v.
    Spheres reaching within NEAR_PLANE_M of the camera plane are flagged ``near``.
    """
    x, y, z = centers[:, 0], centers[:, 1], centers[:, 2]
    near = z - radii <= NEAR_PLANE_M
    extents = []
    for lateral, focal, principal in ((x, intrinsics.fx, intrinsics.cx),
                                      (y, intrinsics.fy, intrinsics.cy)):
        distance = np.sqrt(lateral * lateral + z * z)
        with np.errstate(invalid='ignore', divide='ignore'):
            half = np.arcsin(np.minimum(radii / distance, 1.0))
        theta = np.arctan2(lateral, z)
        low, high = theta - half, theta + half
        limit = 0.5 * np.pi - 1e-6
        extents.append(np.where(low > -limit, focal * np.tan(np.maximum(low, -limit)) + principal,
                                -np.inf))
        extents.append(np.where(high < limit, focal * np.tan(np.minimum(high, limit)) + principal,
                                np.inf))
    return np.array(extents).T, near


def _pixel_boxes(extents, near, intrinsics):
    """Return (N, 4) int pixel boxes [u0, u1, v0, v1) covering float extents."""
    boxes = np.empty(extents.shape)
    with np.errstate(invalid='ignore'):
        np.floor(extents[:, 0::2], out=boxes[:, 0::2])
        np.ceil(extents[:, 1::2], out=boxes[:, 1::2])
        boxes[:, 1::2] += 1
    limits = np.array([intrinsics.width, intrinsics.width, intrinsics.height, intrinsics.height])
    boxes = np.clip(np.nan_to_num(boxes, nan=0.0), 0, limits)
    boxes[near] = [0, intrinsics.width, 0, intrinsics.height]
    return boxes.astype(np.int64)


# Numpy call overhead of intersecting one more batch of round cones, in cone-pixel evaluations.
BLOCK_COST_PX = 1000


def _batches(boxes):
    """
    Group round cones into batches evaluated together, each cone over its own window.

    All windows of a batch have the batch's size (the largest member box), so padding costs
    pixels; a cone joins the batch where that costs least, or opens a new batch when the
    padding would cost more than ``BLOCK_COST_PX``.

    :param boxes: (N, 4) pixel boxes [u0, u1, v0, v1).
    :return: list of (member indices (n,) int array, window width, window height).
    """
    sizes = [(k, u1 - u0, v1 - v0) for k, (u0, u1, v0, v1) in enumerate(boxes.tolist())
             if u1 > u0 and v1 > v0]
    sizes.sort(key=lambda size: -size[1] * size[2])
    batches = []  # [members, width, height, pixels]
    for k, width, height in sizes:
        best, best_cost = None, BLOCK_COST_PX + width * height
        for batch in batches:
            members, batch_width, batch_height, pixels = batch
            extra = (len(members) + 1) * (batch_width if batch_width > width else width) \
                * (batch_height if batch_height > height else height) - pixels
            if extra < best_cost:
                best, best_cost = batch, extra
        if best is None:
            batches.append([[k], width, height, width * height])
        else:
            best[0].append(k)
            best[1], best[2] = max(best[1], width), max(best[2], height)
            best[3] += best_cost
    return [(np.array(members), width, height) for members, width, height, _ in batches]


# Columns of the per-cone constant table of _cone_constants: x, z and y components of
# (start, end, unit axis), then scalars.
_X, _Z, _Y = slice(0, 3), slice(3, 6), slice(6, 9)
_COS2, _HALF_B, _C_FRUSTUM, _C_START, _C_END, _S_LOW, _S_HIGH = range(9, 16)


def _cone_constants(a, b, ra, rb, start_covered):
    """
    Return the (N, 16) float64 per-ray constants of N round cones and (N,) start-sphere flags.

    Columns: the x, z and y components of (start, end, unit axis w), cos^2 of the half
    angle, the frustum's half-b factor, the frustum's c, the start and end spheres' c (start
    NaN when skipped), and the frustum's axial range [s_low, s_high] (s = t * (w . d)).
    """
    axis = b - a
    length = np.linalg.norm(axis, axis=1)
    w = axis / length[:, None]
    sin_a = (ra - rb) / length
    cos2 = 1.0 - sin_a * sin_a
    s0 = -np.sum(a * w, axis=1)
    k = ra - s0 * sin_a
    aa = np.sum(a * a, axis=1)
    # Degenerate cones (one sphere inside the other) have no frustum: NaN drops it.
    c = np.where(length > np.abs(ra - rb), cos2 * (aa - s0 * s0) - k * k, np.nan)
    use_a = ~start_covered & ((length > 0) | (ra > rb))
    table = np.column_stack([
        a[:, 0], b[:, 0], w[:, 0], a[:, 2], b[:, 2], w[:, 2], a[:, 1], b[:, 1], w[:, 1], cos2,
        k * sin_a - cos2 * s0, c, np.where(use_a, aa - ra * ra, np.nan),
        np.sum(b * b, axis=1) - rb * rb, ra * sin_a - s0, length + rb * sin_a - s0])
    return table, use_a


_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)


class ZBuffer:
    """Depth (ray parameter) and primitive index per pixel."""

    def __init__(self, intrinsics, dtype=np.float32):
        self.intrinsics = intrinsics
        self.dtype = dtype
        self.dx, self.dy = ray_grid(intrinsics, dtype)
        self.dx2 = self.dx * self.dx
        self.dy2p1 = self.dy * self.dy + dtype(1.0)
        self.depth = np.full((intrinsics.height, intrinsics.width), np.inf, dtype=dtype)
        self.index = np.full((intrinsics.height, intrinsics.width), -1, dtype=np.int32)

    def _commit(self, box, t, index, near):
        u0, u1, v0, v1 = box
        depth = self.depth[v0:v1, u0:u1]
        closer = t < depth
        if near:
            closer &= t > 0
        np.copyto(depth, t, where=closer)
        np.copyto(self.index[v0:v1, u0:u1], index, where=closer)

    def _block(self, box):
        u0, u1, v0, v1 = box
        return self.dx[:, u0:u1], self.dy[v0:v1], self.dx2[:, u0:u1] + self.dy2p1[v0:v1]

    def add_round_cones(self, starts, ends, radii_start, radii_end, first_index,
                        start_covered=None):
        """
        Intersect N round cones; primitive k gets index ``first_index + k``.

        ``start_covered`` (N,) bool marks cones whose start sphere lies inside another
        primitive's sphere, which saves its intersection test.
        """
        starts = np.asarray(starts, dtype=np.float64).reshape(-1, 3)
        ends = np.asarray(ends, dtype=np.float64).reshape(-1, 3)
        self._add_cones(starts, ends, np.asarray(radii_start, dtype=np.float64).reshape(-1),
                        np.asarray(radii_end, dtype=np.float64).reshape(-1),
                        first_index + np.arange(len(starts)), start_covered)

    def add_all(self, primitives, first_index, round_cones=None):
        """
        Intersect primitives; primitive k gets index ``first_index + k``.

        :param primitives: sequence of primitives.
        :param first_index: index of the first primitive.
        :param round_cones: optional more round cones intersected in the same pass as the
            primitives' round cones (fewer, fuller batches): a dict of 'start' (N, 3), 'end'
            (N, 3), 'radius_start' (N,), 'radius_end' (N,), 'start_covered' (N,) bool (see
            :meth:`add_round_cones`) and 'index' (N,) int, each below ``first_index``.
        """
        cones = [k for k, p in enumerate(primitives) if isinstance(p, (RoundCone, Sphere))]
        shapes = [primitives[k] for k in cones]
        starts = [p.start if isinstance(p, RoundCone) else p.center for p in shapes]
        ends = [p.end if isinstance(p, RoundCone) else p.center for p in shapes]
        radii_start = [p.radius_start if isinstance(p, RoundCone) else p.radius
                       for p in shapes]
        radii_end = [p.radius_end if isinstance(p, RoundCone) else p.radius for p in shapes]
        indices = first_index + np.array(cones, dtype=np.int64)
        covered = np.zeros(len(cones), dtype=bool)
        if round_cones is not None:
            starts = np.concatenate([np.reshape(round_cones['start'], (-1, 3)),
                                     np.reshape(starts, (-1, 3))])
            ends = np.concatenate([np.reshape(round_cones['end'], (-1, 3)),
                                   np.reshape(ends, (-1, 3))])
            radii_start = np.concatenate([round_cones['radius_start'], radii_start])
            radii_end = np.concatenate([round_cones['radius_end'], radii_end])
            indices = np.concatenate([round_cones['index'], indices])
            covered = np.concatenate([round_cones['start_covered'], covered])
        if len(indices):
            self._add_cones(np.asarray(starts, dtype=np.float64).reshape(-1, 3),
                            np.asarray(ends, dtype=np.float64).reshape(-1, 3),
                            np.asarray(radii_start, dtype=np.float64),
                            np.asarray(radii_end, dtype=np.float64), indices,
                            covered.astype(bool))
        for k, primitive in enumerate(primitives):
            if not isinstance(primitive, (RoundCone, Sphere)):
                self.add(primitive, first_index + k)

    def _add_cones(self, starts, ends, radii_start, radii_end, indices, start_covered):
        if start_covered is None:
            start_covered = np.zeros(len(starts), dtype=bool)
        count = len(starts)
        extents, near = _sphere_extents(np.concatenate([starts, ends]),
                                        np.concatenate([radii_start, radii_end]),
                                        self.intrinsics)
        first, second = extents[:count], extents[count:]
        extents = np.maximum(first, second)
        np.minimum(first[:, 0::2], second[:, 0::2], out=extents[:, 0::2])
        near = near[:count] | near[count:]
        boxes = _pixel_boxes(extents, near, self.intrinsics)
        batches = _batches(boxes)
        if not batches:
            return
        with np.errstate(invalid='ignore', divide='ignore'):
            table, use_a = _cone_constants(starts, ends, radii_start, radii_end,
                                           start_covered)
            table = table.astype(self.dtype)
            hits = []
            for members, width, height in batches:
                # Each member's window covers its box and stays inside the image.
                limit = (self.intrinsics.width - width, self.intrinsics.height - height)
                origins = np.minimum(boxes[members][:, 0::2], limit)
                t = self._round_cones(origins, width, height, table[members],
                                      bool(np.count_nonzero(use_a[members])),
                                      bool(np.count_nonzero(near[members])))
                hits.extend(zip(members.tolist(), origins.tolist(), t))
        # Committing in index order keeps the lower index on exact depth ties. Only a cone's
        # own box can hold hits; the rest of its window is padding.
        hits.sort(key=lambda hit: hit[0])
        for k, (u_window, v_window), t in hits:
            u0, u1, v0, v1 = boxes[k].tolist()
            self._commit((u0, u1, v0, v1),
                         t[v0 - v_window:v1 - v_window, u0 - u_window:u1 - u_window],
                         indices[k], near[k])

    def _round_cones(self, origins, width, height, table, use_start, exits):
        """
        Return (n, height, width) entry depths of n round cones (NaN: miss).

        Cone k is evaluated over the window of the given size at pixel ``origins[k]``
        (u0, v0); ``table`` holds its constants (see :func:`_cone_constants`). ``use_start``
        tests the start spheres, ``exits`` also the frustum's far root (only a camera inside
        a cone sees it).
        """
        columns = origins[:, :1] + np.arange(width)
        rows = origins[:, 1:] + np.arange(height)
        dd = self.dx2[0, columns][:, None, :] + self.dy2p1[rows, 0][:, :, None]
        const = table.T[:, :, None, None]
        # Ray dot start, end and axis: (3, n, height, width).
        dots = (const[_X] * self.dx[0, columns][:, None, :] + const[_Z]) \
            + const[_Y] * self.dy[rows, 0][:, :, None]
        cd_a, cd_b, sd = dots

        def sphere_entry(cd, c):
            root = cd * cd
            root -= dd * c
            np.sqrt(root, out=root)
            np.subtract(cd, root, out=root)
            root /= dd
            return root

        if use_start:
            both = sphere_entry(dots[:2], const[_C_START:_C_END + 1])
            t = np.fmin(both[1], both[0], out=both[1])
        else:
            t = sphere_entry(cd_b, const[_C_END])
        # With f(t) = q t^2 + 2 b t + c negative inside the (double) cone, the ray enters it
        # where f falls through zero, at t = (-b - sqrt(b^2 - q c)) / q, computed as
        # (sqrt(...) + b) / -q; the other root leaves it, which only matters when the
        # camera may be inside the cone.
        cos2 = const[_COS2]
        neg_quad = np.multiply(sd, sd, out=cd_b)
        neg_quad -= cos2 * dd
        half_b = sd * const[_HALF_B]
        half_b -= cos2 * cd_a
        root = half_b * half_b
        root += neg_quad * const[_C_FRUSTUM]
        np.sqrt(root, out=root)
        s_low, s_high = const[_S_LOW], const[_S_HIGH]
        inside = np.empty(t.shape, dtype=bool)
        below = np.empty(t.shape, dtype=bool)
        roots = (np.add(root, half_b), np.subtract(half_b, root, out=root)) if exits \
            else (np.add(root, half_b, out=root),)
        for tc in roots:
            tc /= neg_quad
            s = np.multiply(tc, sd, out=cd_a)
            np.greater_equal(s, s_low, out=inside)
            np.less_equal(s, s_high, out=below)
            inside &= below
            np.fmin(t, tc, out=t, where=inside)
        return t

    def add_box(self, box_primitive, index):
        """Intersect one oriented box."""
        center = np.asarray(box_primitive.center, dtype=np.float64)
        rotation = np.asarray(box_primitive.rotation, dtype=np.float64)
        half = np.asarray(box_primitive.half_size, dtype=np.float64)
        corners = center + (_CUBE * half) @ rotation.T
        boxes, near = _screen_boxes(corners[None], self.intrinsics)
        box = boxes[0]
        if box[0] >= box[1] or box[2] >= box[3]:
            return
        dx, dy, _ = self._block(box)
        origin = -(rotation.T @ center)
        t_near = t_far = None
        with np.errstate(invalid='ignore', divide='ignore'):
            for i in range(3):
                r0, r1, r2 = (float(x) for x in rotation[:, i])
                d = (r0 * dx + r2) + r1 * dy
                inv = 1.0 / d
                t0 = (-float(half[i]) - float(origin[i])) * inv
                t1 = (float(half[i]) - float(origin[i])) * inv
                lo, hi = np.fmin(t0, t1), np.fmax(t0, t1)
                t_near = lo if t_near is None else np.fmax(t_near, lo)
                t_far = hi if t_far is None else np.fmin(t_far, hi)
        t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.nan)
        self._commit(box, t, index, near[0])

    def add_cylinder(self, cylinder, index):
        """Intersect one capped cylinder."""
        center = np.asarray(cylinder.center, dtype=np.float64)
        axis = np.asarray(cylinder.axis, dtype=np.float64)
        axis = axis / np.linalg.norm(axis)
        radius, half = float(cylinder.radius), float(cylinder.half_length)
        # Each end disc lies inside the sphere of the cylinder's radius around its centre.
        ends = center[None] + np.array([[-half], [half]]) * axis[None]
        extents, near = _sphere_extents(ends, np.array([radius, radius]), self.intrinsics)
        extents = np.array([[extents[:, 0].min(), extents[:, 1].max(), extents[:, 2].min(),
                             extents[:, 3].max()]])
        near = near[:1] | near[1:]
        boxes = _pixel_boxes(extents, near, self.intrinsics)
        box = boxes[0]
        if box[0] >= box[1] or box[2] >= box[3]:
            return
        helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
        e1 = cross(axis, helper)
        e1 /= np.linalg.norm(e1)
        e2 = cross(axis, e1)
        basis = np.stack([e1, e2, axis], axis=1)
        origin = -(basis.T @ center)
        dx, dy, _ = self._block(box)
        d = [(float(r[0]) * dx + float(r[2])) + float(r[1]) * dy for r in basis.T]
        o1, o2, o3 = (float(x) for x in origin)
        quad = d[0] * d[0] + d[1] * d[1]
        half_b = o1 * d[0] + o2 * d[1]
        c = o1 * o1 + o2 * o2 - radius * radius
        with np.errstate(invalid='ignore', divide='ignore'):
            side = (-half_b - np.sqrt(half_b * half_b - quad * c)) / quad
            along = o3 + side * d[2]
            t = np.where(np.abs(along) <= half, side, np.nan)
            for cap in (-half, half):
                tc = (cap - o3) / d[2]
                x1, x2 = o1 + tc * d[0], o2 + tc * d[1]
                t = np.fmin(t, np.where(x1 * x1 + x2 * x2 <= radius * radius, tc, np.nan))
        t = np.where(t > 0, t, np.nan)
        self._commit(box, t, index, near[0])

    def add_plane(self, plane, index):
        """Intersect one infinite plane (full image)."""
        normal = np.asarray(plane.normal, dtype=np.float64)
        offset = float(normal @ np.asarray(plane.point, dtype=np.float64))
        n0, n1, n2 = (float(x) for x in normal)
        with np.errstate(invalid='ignore', divide='ignore'):
            t = offset / ((n0 * self.dx + n2) + n1 * self.dy)
        t = np.where(t > 0, t, np.nan)
        self._commit((0, self.intrinsics.width, 0, self.intrinsics.height), t, index, False)

    def add(self, primitive, index):
        """Intersect any one primitive."""
        if isinstance(primitive, RoundCone):
            self.add_round_cones(primitive.start, primitive.end, primitive.radius_start,
                                 primitive.radius_end, index)
        elif isinstance(primitive, Sphere):
            self.add_round_cones(primitive.center, primitive.center, primitive.radius,
                                 primitive.radius, index)
        elif isinstance(primitive, Box):
            self.add_box(primitive, index)
        elif isinstance(primitive, Cylinder):
            self.add_cylinder(primitive, index)
        elif isinstance(primitive, Plane):
            self.add_plane(primitive, index)
        else:
            raise ValueError(f'unknown primitive type {type(primitive).__name__}')

    def depth_m(self):
        """Return the (H, W) float32 depth in metres, NaN where no primitive was hit."""
        depth = self.depth.astype(np.float32)
        depth[~np.isfinite(depth)] = np.nan
        return depth
