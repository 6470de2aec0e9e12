"""
Hand pose networks (PyTorch) and their registry.

Model contract shared by training, export and inference:

- Depth models ('a2j', 'crossinfonet', 'a2j_grouped') take ``depth`` (B, 1, S, S) float32:
  the crop normalised as (d - center_z) / cube_half_depth, clipped to [-1, 1], invalid and
  background pixels 1.0. S is the ``input_size`` config value (any multiple of 16).
- 'joint_groups_rgb' takes ``color`` (B, 3, S, S) float32 RGB in [0, 1] and, when built with
  ``use_depth=True`` (default), ``depth`` as above.
- ``forward`` returns a dict with 'joints' (B, J, 3) in normalised crop coordinates
  (u_norm = (u_px + 0.5) / S * 2 - 1, likewise v; z = (d - center_z) / cube_half_depth) and
  'confidence' (B, J) in [0, 1] (each module documents its definition), plus training-only
  extras. Export keeps only joints and confidence.
- ``loss(outputs, targets)`` returns a dict with 'total' and named parts; targets hold
  'joints' (B, J, 3) normalised as above and 'valid' (B, J) (1 = labelled).
- Every model has ``config`` (the kwargs that rebuild it), ``input_names`` and
  ``input_size``; grouped models also have ``set_step(step)`` and ``grouping()``.

This package imports torch; import it only where torch is needed.
"""

from hand_pose_ros.core.models.a2j import A2J
from hand_pose_ros.core.models.crossinfonet import CrossInfoNet
from hand_pose_ros.core.models.joint_groups import A2JGrouped, JointGroupsRGB

MODELS = {
    'a2j': A2J,
    'crossinfonet': CrossInfoNet,
    'a2j_grouped': A2JGrouped,
    'joint_groups_rgb': JointGroupsRGB,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name, **cfg):
    """
    Build a network by registry name.

    :param name: one of :data:`MODEL_NAMES`.
    :param cfg: constructor keywords (backbone, width, input_size, num_joints, ...).
    :return: the ``torch.nn.Module``; ``model.config`` rebuilds it with
        ``build_model(name, **model.config)``.
    """
    if name not in MODELS:
        raise ValueError(f'unknown model {name!r}; choose one of {list(MODEL_NAMES)}')
    try:
        model = MODELS[name](**cfg)
    except TypeError as error:
        raise ValueError(f'bad config for model {name!r}: {error}') from None
    model.model_name = name
    return model


__all__ = ['A2J', 'A2JGrouped', 'CrossInfoNet', 'JointGroupsRGB', 'MODEL_NAMES', 'MODELS',
           'build_model']
