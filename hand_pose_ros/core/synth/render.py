"""
Exact ray casting of simple primitives into a z-buffer.

Rays leave the camera centre through pixel centres at integer pixel coordinates (u, v), with
direction d = ((u - cx) / fx, (v - cy) / fy, 1): a hit at ray parameter t lies at depth z = t.
Each primitive is intersected only inside its projected screen-space bounding box; ray
components are kept separable ((1, w) and (h, 1) arrays) so per-pixel work is a few
broadcast numpy operations. Primitives: round cones (tapered capsules: the convex hull of two
spheres, exact as two spheres plus the tangent frustum; spheres and capsules are special
cases), oriented boxes, capped cylinders and planes.
"""

from dataclasses import dataclass

import numpy as np

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
    return np.stack(extents, axis=1), near


def _pixel_boxes(extents, near, intrinsics):
    """Return (N, 4) int pixel boxes [u0, u1, v0, v1) covering float extents."""
    with np.errstate(invalid='ignore'):
        boxes = np.stack([np.floor(extents[:, 0]), np.ceil(extents[:, 1]) + 1,
                          np.floor(extents[:, 2]), np.ceil(extents[:, 3]) + 1], axis=1)
    limits = np.array([intrinsics.width, intrinsics.width, intrinsics.height, intrinsics.height])
    boxes = np.clip(np.nan_to_num(boxes, nan=0.0), 0, limits)
    boxes[near] = [0, intrinsics.width, 0, intrinsics.height]
    return boxes.astype(np.int64)


# Numpy call overhead of intersecting one more pixel box, in cone-pixel evaluations.
BLOCK_COST_PX = 4000


def _group_blocks(boxes, near):
    """
    Group consecutive round cones that are cheaper to intersect over one shared box.

    :param boxes: (N, 4) pixel boxes [u0, u1, v0, v1).
    :param near: (N,) near-plane flags (near cones stay alone).
    :return: list of (member indices (n,) int array, shared box).
    """
    def area(box):
        return max(box[1] - box[0], 0) * max(box[3] - box[2], 0)

    groups = []
    for k, box in enumerate(boxes):
        if area(box) == 0:
            continue
        if groups and not near[k] and not near[groups[-1][0][-1]]:
            members, shared = groups[-1]
            union = (min(shared[0], box[0]), max(shared[1], box[1]),
                     min(shared[2], box[2]), max(shared[3], box[3]))
            merged = BLOCK_COST_PX + (len(members) + 1) * area(union)
            separate = 2 * BLOCK_COST_PX + len(members) * area(shared) + area(box)
            if merged < separate:
                groups[-1] = (members + [k], union)
                continue
        groups.append(([k], tuple(box)))
    return [(np.array(members), box) for members, box in groups]


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

    def add_all(self, primitives, first_index):
        """Intersect primitives; primitive k gets index ``first_index + k``."""
        cones = [k for k, p in enumerate(primitives) if isinstance(p, (RoundCone, Sphere))]
        if cones:
            shapes = [primitives[k] for k in cones]
            starts = np.array([p.start if isinstance(p, RoundCone) else p.center
                               for p in shapes], dtype=np.float64)
            ends = np.array([p.end if isinstance(p, RoundCone) else p.center
                             for p in shapes], dtype=np.float64)
            radii_start = np.array([p.radius_start if isinstance(p, RoundCone) else p.radius
                                    for p in shapes], dtype=np.float64)
            radii_end = np.array([p.radius_end if isinstance(p, RoundCone) else p.radius
                                  for p in shapes], dtype=np.float64)
            self._add_cones(starts, ends, radii_start, radii_end,
                            first_index + np.array(cones), None)
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
        extents = np.stack([np.minimum(first[:, 0], second[:, 0]),
                            np.maximum(first[:, 1], second[:, 1]),
                            np.minimum(first[:, 2], second[:, 2]),
                            np.maximum(first[:, 3], second[:, 3])], axis=1)
        near = near[:count] | near[count:]
        boxes = _pixel_boxes(extents, near, self.intrinsics)
        with np.errstate(invalid='ignore', divide='ignore'):
            for members, box in _group_blocks(boxes, near):
                t = self._round_cones(box, starts[members], ends[members],
                                      radii_start[members], radii_end[members],
                                      start_covered[members])
                if len(members) == 1:
                    index = indices[members[0]]
                    t = t[0]
                else:
                    index = indices[members[np.argmin(np.where(np.isnan(t), np.inf, t),
                                                      axis=0)]]
                    t = np.fmin.reduce(t, axis=0)
                self._commit(box, t, index, near[members].any())

    def _round_cones(self, box, a, b, ra, rb, start_covered):
        """Return (n, h, w) entry depths of n round cones over one pixel box (NaN: miss)."""
        count = len(ra)
        dx, dy, dd = self._block(box)
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

        def column(values):
            return np.asarray(values, dtype=self.dtype).reshape(count, 1, 1)

        cd_a = (column(a[:, 0]) * dx + column(a[:, 2])) + column(a[:, 1]) * dy
        cd_b = (column(b[:, 0]) * dx + column(b[:, 2])) + column(b[:, 1]) * dy
        t = _sphere_entry(cd_b, dd, column(np.sum(b * b, axis=1) - rb * rb))
        if use_a.any():
            t = np.fmin(t, _sphere_entry(cd_a, dd, column(np.where(use_a, aa - ra * ra,
                                                                   np.nan))))
        cos2_c = column(cos2)
        sd = (column(w[:, 0]) * dx + column(w[:, 2])) + column(w[:, 1]) * dy
        quad = cos2_c * dd - sd * sd
        half_b = sd * column(k * sin_a - cos2 * s0) - cos2_c * cd_a
        root = np.sqrt(half_b * half_b - quad * column(c))
        lo_s, hi_s = column(ra * sin_a - s0), column(length + rb * sin_a - s0)
        for sign in (-1.0, 1.0):
            tc = (sign * root - half_b) / quad
            s = tc * sd
            t = np.fmin(t, np.where((s >= lo_s) & (s <= hi_s), tc, np.nan))
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
        e1 = np.cross(axis, helper)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
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


def _sphere_entry(cd, dd, c):
    """Return the entry ray parameter of a sphere (NaN where missed; call under errstate)."""
    return (cd - np.sqrt(cd * cd - dd * c)) / dd
