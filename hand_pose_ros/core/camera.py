"""
Pinhole camera intrinsics, projection and depth image conventions.

Depth images are either uint16 millimetres (0 = invalid) or float32 metres
(NaN or 0 = invalid), following REP 118. Points are in the camera optical frame
(x right, y down, z forward), metres.
"""

from dataclasses import dataclass
import math

import numpy as np

# Camera presets (fx, fy, cx, cy, width, height) from the reference facts.
CAMERA_PRESETS = {
    'sr300': (475.065948, 475.065857, 315.944855, 245.287079, 640, 480),
    'hands2017': (475.065948, 475.065857, 315.944855, 245.287079, 640, 480),
    'nyu': (588.03, 587.07, 320.0, 240.0, 640, 480),
    'icvl': (240.99, 240.96, 160.0, 120.0, 320, 240),
    'msra': (241.42, 241.42, 160.0, 120.0, 320, 240),
    'd435_640x480': (615.0, 615.0, 320.0, 240.0, 640, 480),
    'd435_848x480': (425.0, 425.0, 424.0, 240.0, 848, 480),
}


def _finite_number(value):
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def principal_point_inside(cx, cy, width, height):
    """Return whether a principal point lies in a width x height image (edges included)."""
    return 0.0 <= cx <= width and 0.0 <= cy <= height


@dataclass(frozen=True)
class CameraIntrinsics:
    """
    Pinhole intrinsics of a depth camera.

    :param fx: focal length along x, pixels.
    :param fy: focal length along y, pixels.
    :param cx: principal point x, pixels.
    :param cy: principal point y, pixels.
    :param width: image width, pixels.
    :param height: image height, pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        for name in ('fx', 'fy', 'cx', 'cy'):
            value = getattr(self, name)
            if not _finite_number(value):
                raise ValueError(f'camera intrinsics: {name} must be a finite number, '
                                 f'got {value!r}')
        # Below a pixel a focal length is no camera (a field of view past 179 degrees on any
        # image), and its inverse overflows: refused like a negative one.
        if self.fx < 1.0 or self.fy < 1.0:
            raise ValueError(f'camera intrinsics: focal lengths must be positive (1 pixel at '
                             f'least), got fx={self.fx}, fy={self.fy}')
        for name in ('width', 'height'):
            value = getattr(self, name)
            if not _finite_number(value) or isinstance(value, bool) or int(value) != value \
                    or value <= 0:
                raise ValueError(f'camera intrinsics: {name} must be a positive integer, '
                                 f'got {value!r}')
        object.__setattr__(self, 'width', int(self.width))
        object.__setattr__(self, 'height', int(self.height))
        # Past 10,000 image sizes a focal length is no camera either (a field of view of a
        # few thousandths of a degree), and the pixel grids it implies overflow.
        limit = 1e4 * max(self.width, self.height)
        if self.fx > limit or self.fy > limit:
            raise ValueError(f'camera intrinsics: focal lengths must be at most 10,000 image '
                             f'sizes ({limit:g} px), got fx={self.fx}, fy={self.fy}')

    @classmethod
    def from_preset(cls, name):
        """Return the intrinsics of a named camera preset (see ``CAMERA_PRESETS``)."""
        try:
            return cls(*CAMERA_PRESETS[name])
        except KeyError:
            raise ValueError(f'unknown camera preset {name!r}; '
                             f'choose from {sorted(CAMERA_PRESETS)}') from None

    @classmethod
    def from_spec(cls, spec):
        """Return intrinsics from a preset name or a mapping of the six fields."""
        if isinstance(spec, str):
            return cls.from_preset(spec)
        try:
            return cls(**{name: spec[name] for name in
                          ('fx', 'fy', 'cx', 'cy', 'width', 'height')})
        except (KeyError, TypeError):
            raise ValueError(f'camera must be a preset name or a mapping of fx, fy, cx, cy, '
                             f'width and height, got {spec!r}') from None

    @property
    def matrix(self):
        """Return the 3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, factor):
        """Return intrinsics for the image resized by ``factor``."""
        return CameraIntrinsics(self.fx * factor, self.fy * factor, self.cx * factor,
                                self.cy * factor, max(1, round(self.width * factor)),
                                max(1, round(self.height * factor)))

    def window(self, u0, v0, width, height):
        """
        Return the intrinsics of the sub-image starting at pixel (u0, v0).

        Rendering or cropping with these intrinsics gives exactly that window of the
        full image; the window may extend past the full image's borders.
        """
        return CameraIntrinsics(self.fx, self.fy, self.cx - u0, self.cy - v0, width, height)

    def check_principal_point(self):
        """
        Raise ValueError when the principal point lies outside the image.

        A camera's own calibration puts it inside the sensor; outside, the intrinsics are
        most likely those of another resolution (a 1280x720 calibration on a 640x480 stream).
        Checked where intrinsics come from a camera (camera_info, a recording's intrinsics
        file), not by the estimator: a window cut from a larger image (:meth:`window`) is a
        valid camera whose principal point may lie outside it.
        """
        if not principal_point_inside(self.cx, self.cy, self.width, self.height):
            raise ValueError(f'camera intrinsics: principal point ({self.cx:g}, {self.cy:g}) '
                             f'is outside the {self.width}x{self.height} image (intrinsics '
                             f'of another resolution?)')

    def check_image(self, image):
        """Raise ValueError when an image's size differs from the intrinsics' size."""
        height, width = np.shape(image)[:2]
        if (width, height) != (self.width, self.height):
            raise ValueError(f'image is {width}x{height} but camera intrinsics are '
                             f'{self.width}x{self.height}')


def xyz_from_uvd(uvd, intrinsics):
    """
    Back-project pixels with depth to camera-frame points.

    :param uvd: (..., 3) pixel u, pixel v, depth in metres.
    :param intrinsics: :class:`CameraIntrinsics`.
    :return: (..., 3) float64 points in metres.
    """
    uvd = np.asarray(uvd, dtype=np.float64)
    z = uvd[..., 2]
    x = (uvd[..., 0] - intrinsics.cx) * z / intrinsics.fx
    y = (uvd[..., 1] - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=-1)


def uvd_from_xyz(xyz, intrinsics):
    """
    Project camera-frame points to pixels with depth.

    :param xyz: (..., 3) points in metres; z must be positive for a finite result.
    :param intrinsics: :class:`CameraIntrinsics`.
    :return: (..., 3) float64 pixel u, pixel v, depth in metres.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    z = xyz[..., 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        u = intrinsics.fx * xyz[..., 0] / z + intrinsics.cx
        v = intrinsics.fy * xyz[..., 1] / z + intrinsics.cy
    return np.stack([u, v, z], axis=-1)


def check_depth(depth):
    """
    Return a depth image as an array after checking its shape and type (values untouched).

    :param depth: (H, W) uint16 millimetres or float32/float64 metres.
    :raises ValueError: not 2-D, empty, or another dtype.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f'depth image must be 2-D (H, W), got shape {depth.shape}')
    if depth.size == 0:
        raise ValueError('depth image is empty')
    if not depth.dtype.isnative:   # big-endian 16-bit PNG/PGM readers: the same values
        depth = depth.astype(depth.dtype.newbyteorder('='))
    if depth.dtype not in (np.uint16, np.float32, np.float64):
        raise ValueError(f'depth image dtype must be uint16 (mm) or float32/float64 (m), '
                         f'got {depth.dtype}')
    return depth


def depth_to_metres(depth):
    """
    Return a float32 metre view of a depth image; invalid pixels become NaN.

    :param depth: (H, W) uint16 millimetres (0 invalid) or float32/float64 metres
        (NaN, inf, 0 or negative invalid).
    :return: (H, W) float32 metres, a new array.
    """
    depth = check_depth(depth)
    # Masked copies rather than boolean-index assignment: this runs on every frame.
    if depth.dtype == np.uint16:
        out = np.full(depth.shape, np.nan, dtype=np.float32)
        np.copyto(out, depth, where=depth != 0)
        out *= np.float32(0.001)
        return out
    out = depth.astype(np.float32, copy=True)
    valid = np.isfinite(out)
    valid &= out > 0
    np.copyto(out, np.float32(np.nan), where=~valid)
    return out


def depth_to_millimetres(depth_m):
    """Convert float metres (NaN invalid) to uint16 millimetres (0 invalid), saturating."""
    # In place on one float64 buffer: the synthetic renderer converts every frame.
    millimetres = np.multiply(depth_m, 1000.0, dtype=np.float64)
    np.rint(millimetres, out=millimetres)
    valid = np.isfinite(millimetres)
    valid &= millimetres > 0
    np.minimum(millimetres, np.iinfo(np.uint16).max, out=millimetres)
    depth_mm = np.zeros(millimetres.shape, dtype=np.uint16)
    np.copyto(depth_mm, millimetres, casting='unsafe', where=valid)
    return depth_mm
