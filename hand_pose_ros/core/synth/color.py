"""Simple colour rendering of a ray-cast scene: Lambertian shading, random backgrounds."""

import numpy as np

from hand_pose_ros.core.synth.sensor import pixel_random


def surface_normals(depth_m, dx, dy):
    """
    Return (H, W, 3) unit normals facing the camera from a clean depth image.

    :param depth_m: (H, W) depth, NaN where empty.
    :param dx: (1, W) ray x components; ``dy``: (H, 1) ray y components.
    """
    z = np.where(np.isfinite(depth_m), depth_m, 0.0).astype(np.float32)
    points = np.stack([dx * z, dy * z, z], axis=-1)
    padded = np.pad(points, ((1, 1), (1, 1), (0, 0)), mode='edge')
    du = padded[1:-1, 2:] - padded[1:-1, :-2]
    dv = padded[2:, 1:-1] - padded[:-2, 1:-1]
    normals = np.cross(du, dv)
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = normals / np.maximum(norm, 1e-12)
    facing = np.sum(normals * points, axis=-1, keepdims=True) > 0
    return np.where(facing, -normals, normals)


def background_image(seed, offset_uv, size, full_size, grid=(5, 4)):
    """Return an (H, W, 3) float32 smooth random background in full-image coordinates."""
    rng = np.random.default_rng([int(seed), 11])
    colours = rng.uniform(0.0, 1.0, (grid[1], grid[0], 3)).astype(np.float32)
    colours *= rng.uniform(0.3, 1.0)
    width, height = size
    full_width, full_height = full_size
    u = (np.arange(width) + offset_uv[0]) / max(full_width - 1, 1) * (grid[0] - 1)
    v = (np.arange(height) + offset_uv[1]) / max(full_height - 1, 1) * (grid[1] - 1)
    u = np.clip(u, 0, grid[0] - 1.001)
    v = np.clip(v, 0, grid[1] - 1.001)
    iu, iv = u.astype(int), v.astype(int)
    fu, fv = (u - iu)[None, :, None], (v - iv)[:, None, None]
    top = colours[iv][:, iu] * (1 - fu) + colours[iv][:, iu + 1] * fu
    bottom = colours[iv + 1][:, iu] * (1 - fu) + colours[iv + 1][:, iu + 1] * fu
    return (top * (1 - fv) + bottom * fv).astype(np.float32)


def shade(depth_m, index, albedo, dx, dy, seed, offset_uv, full_size):
    """
    Return an (H, W, 3) uint8 colour image of a ray-cast scene.

    :param depth_m: (H, W) clean depth in metres, NaN where empty.
    :param index: (H, W) primitive index per pixel, -1 where empty.
    :param albedo: (N, 3) albedo of each primitive.
    :param dx: (1, W) and ``dy`` (H, 1): ray components of the image's pixels.
    :param seed: per-frame seed (light direction, background, pixel noise).
    :param offset_uv: absolute pixel of the image's top-left corner in the full image.
    :param full_size: (width, height) of the full image.
    """
    rng = np.random.default_rng([int(seed), 13])
    height, width = depth_m.shape
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, 0.3), -1.0])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.2, 0.45)
    normals = surface_normals(depth_m, dx, dy)
    lambert = np.clip(normals @ light.astype(np.float32), 0.0, 1.0)
    table = np.concatenate([np.asarray(albedo, dtype=np.float32).reshape(-1, 3),
                            np.zeros((1, 3), np.float32)])
    colour = table[index] * (ambient + (1.0 - ambient) * lambert)[..., None]
    empty = index < 0
    background = background_image(seed, offset_uv, (width, height), full_size)
    colour[empty] = background[empty]
    u_abs = np.arange(offset_uv[0], offset_uv[0] + width, dtype=np.int64)[None, :]
    v_abs = np.arange(offset_uv[1], offset_uv[1] + height, dtype=np.int64)[:, None]
    colour = colour + 0.015 * pixel_random('normal', seed, 21, u_abs, v_abs)[..., None]
    gamma = np.power(np.clip(colour, 0.0, 1.0), 1.0 / 2.2)
    return np.round(gamma * 255.0).astype(np.uint8)
