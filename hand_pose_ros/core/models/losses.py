"""
Loss pieces shared by the hand pose networks.

All functions take a ``valid`` mask (B, J) so partially labelled datasets (ICVL, NYU-14)
contribute only their labelled joints.
"""

import torch


def smooth_l1_tau(error, tau):
    """Return A2J's L_tau of an error tensor: 0.5 x^2 / tau inside |x| < tau, else |x| - tau/2."""
    abs_error = error.abs()
    return torch.where(abs_error < tau, 0.5 * abs_error ** 2 / tau, abs_error - 0.5 * tau)


def masked_mean(per_joint, valid):
    """Return the mean of a (B, J) per-joint loss over the labelled joints."""
    valid = valid.to(per_joint.dtype)
    return (per_joint * valid).sum() / valid.sum().clamp(min=1.0)


def check_targets(targets, num_joints):
    """
    Return (joints, valid) from a targets dict, raising ValueError on bad shapes.

    :param targets: dict with 'joints' (B, J, 3) and optionally 'valid' (B, J).
    :param num_joints: expected J.
    :return: joints (B, J, 3) and valid (B, J) float tensors.
    """
    if 'joints' not in targets:
        raise ValueError("targets need a 'joints' entry of shape (B, J, 3)")
    joints = targets['joints']
    if joints.dim() != 3 or joints.shape[1:] != (num_joints, 3):
        raise ValueError(
            f"targets['joints'] must have shape (B, {num_joints}, 3), got {tuple(joints.shape)}")
    valid = targets.get('valid')
    if valid is None:
        valid = torch.ones(joints.shape[:2], dtype=joints.dtype, device=joints.device)
    elif valid.shape != joints.shape[:2]:
        raise ValueError(
            f"targets['valid'] must have shape {tuple(joints.shape[:2])}, "
            f'got {tuple(valid.shape)}')
    valid = valid.to(joints.dtype)
    # Unlabelled joints may hold NaN; zero them so they cannot poison the masked sums.
    joints = torch.where(valid[..., None] > 0, joints, torch.zeros_like(joints))
    return joints, valid


def gaussian_heatmaps(joints_uv, size, sigma):
    """
    Return (B, J, size, size) Gaussian heat-maps with peak 1 at normalised uv positions.

    :param joints_uv: (B, J, 2) normalised crop coordinates in [-1, 1] (pixel-centre
        convention, see :func:`pixel_grid`).
    :param size: heat-map side in cells.
    :param sigma: Gaussian standard deviation in heat-map cells.
    """
    grid = pixel_grid(size, joints_uv.device, joints_uv.dtype)
    cells = (joints_uv + 1.0) * 0.5 * size - 0.5
    du = grid[None, None, None, :] - cells[..., 0, None, None]
    dv = grid[None, None, :, None] - cells[..., 1, None, None]
    return torch.exp(-(du ** 2 + dv ** 2) / (2.0 * sigma ** 2))


def pixel_grid(size, device=None, dtype=torch.float32):
    """Return the (size,) cell indices 0..size-1 as a float tensor."""
    return torch.arange(size, device=device, dtype=dtype)


def normalised_from_cells(cells, size):
    """Map cell coordinates (cell centre = index) to normalised crop coordinates."""
    return (cells + 0.5) / size * 2.0 - 1.0
