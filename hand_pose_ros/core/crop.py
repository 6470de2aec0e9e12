"""
Crop geometry: the single source of truth for hand crops of every depth model.

A crop is the image window covering a metric box (``cube_size_m``) centred on a hand
centre, resampled to a square ``input_size`` patch. Training, evaluation, export and
inference all use this module, so a model always sees crops made the same way.

Normalisation contract shared with the models:

- patch value = (d - center_z) / (cube_z / 2) for depths inside the box's depth window,
  in [-1, 1]; invalid pixels, pixels outside the image and depths outside the window are
  1.0 (background, "far").
- normalised joint coordinates: x = u_norm, y = v_norm with
  u_norm = (u_px + 0.5) / S * 2 - 1 for crop pixel u_px (pixel centres), so -1 and 1 are the
  crop's outer edges; z = (d - center_z) / (cube_z / 2).

The window is the projection of center +- cube_x / 2, cube_y / 2 at the centre depth, so a
hand keeps the same size in the patch whatever its distance from the camera.
"""

from dataclasses import dataclass, field
import math

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, check_depth, uvd_from_xyz, xyz_from_uvd

BACKGROUND_VALUE = 1.0
INTERPOLATIONS = ('nearest', 'bilinear')
# Centres closer than this cannot be a hand seen by a depth camera (and would blow up the
# window size); they are rejected.
MIN_CENTER_DEPTH_M = 0.05


@dataclass(frozen=True)
class CropSpec:
    """
    Geometry of a model's input crop.

    :param input_size: side of the square patch, pixels.
    :param cube_size_m: (x, y, z) full size of the metric box around the centre, metres;
        x and y set the image window, z the depth window.
    :param interpolation: 'nearest' (default: never invents depths between the hand and the
        background) or 'bilinear' (weights renormalised over valid neighbours).
    """

    input_size: int = 176
    cube_size_m: tuple = (0.2, 0.2, 0.3)
    interpolation: str = 'nearest'

    def __post_init__(self):
        if int(self.input_size) != self.input_size or self.input_size < 2:
            raise ValueError(f'crop input_size must be an integer >= 2, got {self.input_size!r}')
        object.__setattr__(self, 'input_size', int(self.input_size))
        cube = tuple(float(c) for c in self.cube_size_m)
        if len(cube) != 3 or not all(math.isfinite(c) and c > 0 for c in cube):
            raise ValueError(
                f'crop cube_size_m must be three positive lengths (x, y, z) in metres, '
                f'got {self.cube_size_m!r}')
        object.__setattr__(self, 'cube_size_m', cube)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f'crop interpolation must be one of {INTERPOLATIONS}, '
                             f'got {self.interpolation!r}')

    def to_dict(self):
        """Return a plain dict (for model cards)."""
        return {'input_size': self.input_size, 'cube_size_m': list(self.cube_size_m),
                'interpolation': self.interpolation}

    @classmethod
    def from_dict(cls, values):
        """Build a spec from :meth:`to_dict` output; unknown keys raise ValueError."""
        unknown = set(values) - {'input_size', 'cube_size_m', 'interpolation'}
        if unknown:
            raise ValueError(f'unknown crop spec keys: {sorted(unknown)}')
        return cls(**values)


@dataclass(frozen=True)
class CropTransform:
    """
    Mapping between normalised crop coordinates and the camera frame.

    Image pixel (u, v) = ``image_center_uv + linear @ (u_norm, v_norm)``; depth
    d = center_z + z_norm * half_depth_m.

    :param intrinsics: camera intrinsics of the full image.
    :param center_xyz: (3,) crop centre, metres.
    :param image_center_uv: (2,) projection of the centre, pixels.
    :param linear: (2, 2) image pixels per normalised unit (includes any rotation).
    :param half_depth_m: cube_z / 2, metres.
    :param input_size: patch side, pixels.
    """

    intrinsics: CameraIntrinsics
    center_xyz: np.ndarray
    image_center_uv: np.ndarray
    linear: np.ndarray
    half_depth_m: float
    input_size: int
    _inverse: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, '_inverse', np.linalg.inv(self.linear))

    def uv_from_normalized(self, uv_norm):
        """Return (..., 2) full-image pixel coordinates of (..., 2) normalised crop coords."""
        uv_norm = np.asarray(uv_norm, dtype=np.float64)
        return uv_norm @ self.linear.T + self.image_center_uv

    def normalized_from_uv(self, uv):
        """Return (..., 2) normalised crop coordinates of (..., 2) full-image pixels."""
        uv = np.asarray(uv, dtype=np.float64)
        return (uv - self.image_center_uv) @ self._inverse.T

    def xyz_from_normalized(self, joints_norm):
        """Return (..., 3) camera-frame points, metres, of (..., 3) normalised joints."""
        joints_norm = np.asarray(joints_norm, dtype=np.float64)
        if joints_norm.shape[-1] != 3:
            raise ValueError(f'normalised joints must end in 3 coordinates, '
                             f'got shape {joints_norm.shape}')
        uv = self.uv_from_normalized(joints_norm[..., :2])
        depth = self.center_xyz[2] + joints_norm[..., 2] * self.half_depth_m
        return xyz_from_uvd(np.concatenate([uv, depth[..., None]], axis=-1), self.intrinsics)

    def normalized_from_xyz(self, xyz):
        """Return (..., 3) normalised crop coordinates of (..., 3) camera-frame points."""
        xyz = np.asarray(xyz, dtype=np.float64)
        if xyz.shape[-1] != 3:
            raise ValueError(f'points must end in 3 coordinates, got shape {xyz.shape}')
        uvd = uvd_from_xyz(xyz, self.intrinsics)
        uv_norm = self.normalized_from_uv(uvd[..., :2])
        z_norm = (uvd[..., 2] - self.center_xyz[2]) / self.half_depth_m
        return np.concatenate([uv_norm, z_norm[..., None]], axis=-1)

    @property
    def window_uv(self):
        """Return (u_min, v_min, u_max, v_max): the crop's bounding box in image pixels."""
        corners = self.uv_from_normalized(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]))
        return (*corners.min(axis=0), *corners.max(axis=0))


@dataclass(frozen=True)
class CropResult:
    """
    A normalised patch and the transform that made it.

    :param patch: (S, S) float32 normalised depth (see module docstring).
    :param transform: :class:`CropTransform`.
    :param color: optional (S, S, 3) uint8 RGB crop of the same window
        (:func:`crop_color`), for models that take colour.
    """

    patch: np.ndarray
    transform: CropTransform
    color: np.ndarray = None


def check_center(center_xyz, intrinsics):
    """
    Validate a hand centre and return it as a (3,) float64 array.

    :param center_xyz: (3,) metres, camera optical frame.
    :param intrinsics: :class:`CameraIntrinsics` of the image.
    :return: (3,) float64 centre.
    :raises ValueError: when the centre is not finite, is behind (or too close to) the
        camera, or projects outside the image.
    """
    center = np.asarray(center_xyz, dtype=np.float64)
    if center.shape != (3,):
        raise ValueError(f'hand centre must have shape (3,), got {center.shape}')
    if not np.all(np.isfinite(center)):
        raise ValueError(f'hand centre must be finite, got {center.tolist()}')
    if center[2] < MIN_CENTER_DEPTH_M:
        raise ValueError(f'hand centre z={center[2]:.3f} m is behind or too close to the '
                         f'camera (minimum {MIN_CENTER_DEPTH_M} m)')
    u, v = _pixel_of(center, intrinsics)
    if not (-0.5 <= u < intrinsics.width - 0.5 and -0.5 <= v < intrinsics.height - 0.5):
        raise ValueError(f'hand centre {center.tolist()} projects to pixel ({u:.1f}, {v:.1f}), '
                         f'outside the {intrinsics.width}x{intrinsics.height} image')
    return center


def _pixel_of(point_xyz, intrinsics):
    """Return the (u, v) pixel of one (3,) point in plain floats (runs often per frame)."""
    x, y, z = point_xyz.tolist()
    return intrinsics.fx * x / z + intrinsics.cx, intrinsics.fy * y / z + intrinsics.cy


def make_transform(intrinsics, center_xyz, spec, rotation_rad=0.0):
    """
    Return the :class:`CropTransform` of a crop around a validated centre.

    :param intrinsics: :class:`CameraIntrinsics`.
    :param center_xyz: (3,) metres (see :func:`check_center`).
    :param spec: :class:`CropSpec`.
    :param rotation_rad: in-plane rotation of the crop (augmentation), radians; the patch's
        x axis points along image direction (cos r, sin r).
    """
    center = check_center(center_xyz, intrinsics)
    cube_x, cube_y, cube_z = spec.cube_size_m
    half_u = intrinsics.fx * cube_x / 2.0 / center[2]
    half_v = intrinsics.fy * cube_y / 2.0 / center[2]
    cos_r, sin_r = math.cos(rotation_rad), math.sin(rotation_rad)
    # rotation @ diag(half_u, half_v)
    linear = np.array([[cos_r * half_u, -sin_r * half_v], [sin_r * half_u, cos_r * half_v]])
    return CropTransform(intrinsics=intrinsics, center_xyz=center,
                         image_center_uv=np.array(_pixel_of(center, intrinsics)),
                         linear=linear, half_depth_m=cube_z / 2.0,
                         input_size=spec.input_size)


def _check_depth(depth, intrinsics):
    depth = check_depth(depth)
    intrinsics.check_image(depth)
    return depth


def _pixel_centres(size):
    """Return the (S,) normalised coordinates of a crop's pixel centres."""
    return (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0


def _window_uv(transform):
    """Return the (S, S) image coordinates u, v of every pixel centre of a crop."""
    grid = _pixel_centres(transform.input_size)
    uv = transform.uv_from_normalized(np.stack(np.meshgrid(grid, grid, indexing='xy'), -1))
    return uv[..., 0], uv[..., 1]


def _nearest_index(coordinates, size):
    """Return the nearest pixel indices of coordinates along one axis, clipped, and inside."""
    index = np.floor(coordinates + 0.5).astype(np.int64)
    return np.clip(index, 0, size - 1), (index >= 0) & (index < size)


def _sample_nearest(depth_m, u, v):
    """
    Return the (float32) depths of the pixels nearest to (u, v); NaN outside the image.

    An axis-aligned window's u is a (1, S) row and v an (S, 1) column: whole rows, then
    columns, are taken instead of S x S single pixels.
    """
    rows, rows_inside = _nearest_index(v, depth_m.shape[0])
    cols, cols_inside = _nearest_index(u, depth_m.shape[1])
    if rows.shape[-1] == 1 and cols.shape[0] == 1:
        samples = depth_m.take(rows[:, 0], axis=0).take(cols[0], axis=1)
    else:
        samples = depth_m[rows, cols]
    samples = samples.astype(np.float32)
    if not (rows_inside.all() and cols_inside.all()):
        samples[~np.broadcast_to(rows_inside & cols_inside, samples.shape)] = np.nan
    return samples


def _sample_bilinear(depth_m, u, v):
    height, width = depth_m.shape
    u0 = np.floor(u).astype(np.int64)
    v0 = np.floor(v).astype(np.int64)
    fu = u - u0
    fv = v - v0
    shape = np.broadcast_shapes(u.shape, v.shape)
    total = np.zeros(shape)
    weight = np.zeros(shape)
    for du, dv, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)),
                      (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
        ui, vi = u0 + du, v0 + dv
        inside = (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height)
        values = depth_m[np.clip(vi, 0, height - 1), np.clip(ui, 0, width - 1)]
        valid = inside & np.isfinite(values) & (values > 0)
        w = np.where(valid, w, 0.0)
        total += w * np.where(valid, values, 0.0)
        weight += w
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(weight > 1e-6, total / weight, np.nan)


_SAMPLERS = {'nearest': _sample_nearest, 'bilinear': _sample_bilinear}


def crop_depth(depth_m, intrinsics, center_xyz, spec, rotation_rad=0.0):
    """
    Crop and normalise the metric box around a hand centre.

    :param depth_m: (H, W) float metres (NaN, inf or <= 0 invalid), or the camera's uint16
        millimetres (0 invalid): only the crop's samples are converted.
    :param intrinsics: :class:`CameraIntrinsics` matching the image size.
    :param center_xyz: (3,) hand centre, metres, camera optical frame.
    :param spec: :class:`CropSpec`.
    :param rotation_rad: optional in-plane rotation (training augmentation), radians.
    :return: :class:`CropResult` with a (S, S) float32 patch.
    :raises ValueError: on a bad image or a centre that is not finite, behind the camera or
        outside the image. Windows reaching past the image border are padded as invalid.
    """
    depth_m = _check_depth(depth_m, intrinsics)
    transform = make_transform(intrinsics, center_xyz, spec, rotation_rad)
    if rotation_rad == 0.0:
        # Axis-aligned: a (1, S) row and an (S, 1) column of coordinates broadcast to the grid.
        grid = _pixel_centres(spec.input_size)
        u = (transform.image_center_uv[0] + transform.linear[0, 0] * grid)[None, :]
        v = (transform.image_center_uv[1] + transform.linear[1, 1] * grid)[:, None]
    else:
        u, v = _window_uv(transform)
    samples = _SAMPLERS[spec.interpolation](depth_m, u, v)
    # Depth (millimetres or metres) to the cube's -1..1 in float32, in place; NaN, zero
    # and negative samples are invalid, and they and samples outside the cube are background.
    metres = 0.001 if depth_m.dtype == np.uint16 else 1.0
    patch = np.asarray(samples, dtype=np.float32)
    with np.errstate(invalid='ignore'):
        valid = patch > 0.0
        patch *= np.float32(metres / transform.half_depth_m)
        patch -= np.float32(transform.center_xyz[2] / transform.half_depth_m)
        valid &= np.abs(patch) <= 1.0
    np.copyto(patch, np.float32(BACKGROUND_VALUE), where=~valid)
    return CropResult(patch=patch, transform=transform)


def check_color(color, intrinsics):
    """
    Return a colour image as an array after checking it is registered to the depth image.

    :param color: (H, W, 3) uint8 RGB image of the camera ``intrinsics`` describe.
    :raises ValueError: another shape or dtype.
    """
    color = np.asarray(color)
    if color.dtype != np.uint8 or color.shape != (intrinsics.height, intrinsics.width, 3):
        raise ValueError(f'colour image must be ({intrinsics.height}, {intrinsics.width}, 3) '
                         f'uint8 like the depth image, got {color.shape} {color.dtype}')
    return color


def crop_color(color, transform):
    """
    Crop the window of a depth crop out of the registered colour image.

    :param color: (H, W, 3) uint8 RGB image of the same camera and size as the depth image
        the crop was made from (e.g. a depth-aligned colour stream).
    :param transform: the depth crop's :class:`CropTransform`.
    :return: (S, S, 3) uint8 patch (nearest pixel; black outside the image).
    :raises ValueError: when the image is not (H, W, 3) uint8 of the crop's camera.
    """
    intrinsics = transform.intrinsics
    color = check_color(color, intrinsics)
    u, v = _window_uv(transform)
    rows, rows_inside = _nearest_index(v, intrinsics.height)
    cols, cols_inside = _nearest_index(u, intrinsics.width)
    return np.where((rows_inside & cols_inside)[..., None], color[rows, cols], 0).astype(
        np.uint8)


def crop_batch(depth_m, intrinsics, centers_xyz, spec):
    """
    Crop several hands of one image into a network batch.

    :param depth_m: (H, W) depth image (see :func:`crop_depth`).
    :param intrinsics: :class:`CameraIntrinsics`.
    :param centers_xyz: (N, 3) hand centres, metres.
    :param spec: :class:`CropSpec`.
    :return: ((N, 1, S, S) float32 batch, list of N :class:`CropTransform`).
    """
    centers = np.asarray(centers_xyz, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise ValueError(f'hand centres must have shape (N, 3), got {centers.shape}')
    size = spec.input_size
    batch = np.empty((len(centers), 1, size, size), dtype=np.float32)
    transforms = []
    for i, center in enumerate(centers):
        result = crop_depth(depth_m, intrinsics, center, spec)
        batch[i, 0] = result.patch
        transforms.append(result.transform)
    return batch, transforms


def color_input(patches):
    """
    Return colour crops in the layout colour networks take.

    :param patches: (..., S, S, 3) uint8 RGB crops (from :func:`crop_color`).
    :return: (..., 3, S, S) float32 RGB in [0, 1].
    """
    patches = np.asarray(patches)
    return np.ascontiguousarray(np.moveaxis(patches, -1, -3), dtype=np.float32) / 255.0


def color_batch(color, transforms):
    """
    Cut the windows of a :func:`crop_batch` out of the registered colour image.

    :param color: (H, W, 3) uint8 RGB image (see :func:`crop_color`).
    :param transforms: the depth crops' :class:`CropTransform` list.
    :return: (N, 3, S, S) float32 network input (see :func:`color_input`).
    """
    return color_input(np.stack([crop_color(color, transform) for transform in transforms]))


# Test-time views of a crop, (mirrored, quarter turns): networks trained on crops turned
# through 360 degrees and on left and right hands see each view as a training crop, so the
# views' joints together are a better estimate than any one view (``views`` of the
# estimator).
VIEW_SETS = {
    1: ((False, 0),),
    2: ((False, 0), (False, 2)),
    4: tuple((False, turns) for turns in range(4)),
    8: tuple((mirrored, turns) for mirrored in (False, True) for turns in range(4)),
}


# Exponent of a view's joint confidence in its weight when views are merged. Chosen on
# rendered frames of seed 3000 (not the test seed), default model, 1,000 frames, oracle
# centres, 4 views: plain mean 11.84 mm; confidence to the power 1, 4, 8, 16: 11.81, 11.77,
# 11.78, 11.88 mm (twenty-second session, docs/model-history.md).
VIEW_CONFIDENCE_POWER = 4


def check_views(views):
    """Return the view set of a view count; raise ValueError for a count without one."""
    if views not in VIEW_SETS:
        raise ValueError(f'views must be one of {sorted(VIEW_SETS)}, got {views!r}')
    return VIEW_SETS[views]


def batch_views(batch, views):
    """
    Return every view of a crop batch, view after view.

    :param batch: (N, C, S, S) crops.
    :param views: number of views, a key of :data:`VIEW_SETS`.
    :return: (views * N, C, S, S) contiguous float32 batch.
    """
    return np.ascontiguousarray(np.concatenate([
        np.rot90(batch[..., ::-1] if mirrored else batch, turns, axes=(2, 3))
        for mirrored, turns in check_views(views)]), dtype=np.float32)


def merge_views(joints_norm, confidence, views):
    """
    Map the joints of :func:`batch_views` crops back to the original crops and merge them.

    Each joint is the mean of its views weighted by the view's confidence in it to the power
    :data:`VIEW_CONFIDENCE_POWER`, so a view that is unsure of a joint counts less there.

    :param joints_norm: (views * N, J, 3) normalised joints of the views.
    :param confidence: (views * N, J) per-joint confidence.
    :return: ((N, J, 3) merged joints, (N, J) mean confidence).
    """
    check_views(views)
    joints = np.array(joints_norm, dtype=np.float64).reshape(views, -1, *joints_norm.shape[1:])
    # (u, v) of a view -> (u, v) of the crop: undo the quarter turns, then the mirror.
    joints[..., :2] = np.einsum('vnjk,vlk->vnjl', joints[..., :2], _UNDO_VIEW[views])
    confidence = np.asarray(confidence, dtype=np.float64).reshape(views, -1,
                                                                  *confidence.shape[1:])
    weights = np.clip(confidence, 0.0, 1.0) ** VIEW_CONFIDENCE_POWER
    # A joint no view is sure of at all (every weight 0) gets the plain mean.
    weights = np.where(weights.sum(axis=0) > 0.0, weights, 1.0)[..., None]
    return (joints * weights).sum(axis=0) / weights.sum(axis=0), confidence.mean(axis=0)


def _undo_matrix(mirrored, turns):
    """Return the 2x2 map of a view's (u, v) back to the crop's."""
    # One quarter turn of np.rot90 over (rows, columns) moves crop (u, v) to (v, -u).
    undo = np.linalg.matrix_power(np.array([[0.0, -1.0], [1.0, 0.0]]), turns)
    return np.diag([-1.0, 1.0]) @ undo if mirrored else undo


_UNDO_VIEW = {views: np.stack([_undo_matrix(*view) for view in view_set])
              for views, view_set in VIEW_SETS.items()}
