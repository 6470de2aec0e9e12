"""
Function-preserving widening of a trained network (Net2WiderNet, Chen et al., ICLR 2016).

A wider network (a larger ``width`` or ``head_channels``) starts from a trained narrow one
and computes the same function, so training continues from the narrow model's accuracy
with more capacity instead of from scratch.

Every channel space of the wide network repeats the narrow one's channels in order: wide
channel j is narrow channel j mod C. That mapping is the same for every tensor, so residual
additions stay consistent; it needs every channel count to grow by a whole factor and no
layer that concatenates channel groups (true of A2J: a ResNet trunk and three conv heads).

- A tensor whose first dimension grew k-fold (conv output channels, BatchNorm parameters
  and statistics, biases) is repeated k times along it.
- A conv weight whose input dimension grew k-fold is repeated along it and divided by k:
  each narrow input channel now arrives k times.
- Symmetry breaking: copies of a unit that receive equal inputs and send equal weights get
  equal gradients and never separate. Noise that sums to zero over the k copies of each
  input channel is added to those split weights: the copies' activations are equal at the
  start, so the output is unchanged, while their outgoing weights (and so their gradients)
  differ.
"""

import torch

WIDENABLE = ('a2j',)


def _growth(narrow, wide, dim, name):
    if wide % narrow:
        raise ValueError(f'cannot widen {name}: dimension {dim} grows from {narrow} to {wide}, '
                         f'not by a whole factor')
    return wide // narrow


def widen_state_dict(narrow, wide, noise=0.05, generator=None):
    """
    Map a narrow network's weights onto a wider network of the same architecture.

    :param narrow: state dict of the trained network.
    :param wide: state dict of the wider network (only its keys and shapes are used).
    :param noise: standard deviation of the symmetry-breaking noise, relative to the
        standard deviation of each split weight tensor (0: exact copies).
    :param generator: optional ``torch.Generator`` for the noise.
    :return: a state dict for the wide network.
    """
    if set(narrow) != set(wide):
        raise ValueError(f'cannot widen: the networks have different tensors '
                         f'({sorted(set(narrow) ^ set(wide))[:3]})')
    result = {}
    for name, target in wide.items():
        value = narrow[name]
        if value.dim() != target.dim() or value.shape[2:] != target.shape[2:]:
            raise ValueError(f'cannot widen {name}: shape {tuple(value.shape)} -> '
                             f'{tuple(target.shape)}')
        if value.dim() == 0:
            result[name] = value.clone()
            continue
        value = value.repeat(_growth(value.shape[0], target.shape[0], 0, name),
                             *([1] * (value.dim() - 1)))
        if value.dim() > 1 and value.shape[1] != target.shape[1]:
            value = _split_inputs(value, _growth(value.shape[1], target.shape[1], 1, name),
                                  noise, generator)
        result[name] = value.to(target.dtype)
    return result


def _split_inputs(weight, factor, noise, generator):
    """Repeat ``weight``'s input channels ``factor`` times, sharing each channel's weight."""
    channels = weight.shape[1]
    split = weight.repeat(1, factor, *([1] * (weight.dim() - 2))) / factor
    if noise > 0 and split.numel() > 1:
        jitter = torch.randn(split.shape, generator=generator, dtype=split.dtype)
        jitter = jitter.reshape(split.shape[0], factor, channels, *split.shape[2:])
        jitter = (jitter - jitter.mean(dim=1, keepdim=True)).reshape(split.shape)
        split = split + jitter * (noise * float(split.std()))
    return split
