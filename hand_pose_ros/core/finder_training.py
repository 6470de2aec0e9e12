"""
Training of the learned hand finder (:mod:`hand_pose_ros.core.hand_finder`).

``hand_pose_train_finder`` renders full synthetic frames (every domain-randomisation switch
on: arms, bodies, tables, objects, clutter, a second hand, the sensor model; the camera
cycles through ``CAMERAS``), keeps them as finder inputs in the run folder, and trains
:class:`HandFinderNet` with CenterNet's losses: a penalty-reduced focal loss on a heat map
with a Gaussian blob per hand (``sigma`` = the hand's projected diameter / 6), and L1 losses
on the sub-cell offset and the centre depth at each hand's cell. A hand is a positive when
at least ``MIN_VISIBLE_FRACTION`` of its joints are seen; hands hidden more than that are
neither positive nor negative (their blob is left out of the loss), as are hands centred
outside the image (their fingers may reach into it). Frames are flipped at
random, left-right and up-down (a camera can look at a hand from any side).
"""

import contextlib
from dataclasses import asdict, dataclass
import math
import os
from pathlib import Path
import shutil

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz
from hand_pose_ros.core.hand_finder import (CELL_PX, DEPTH_OFFSET_M, DEPTH_UNIT_M,
                                            finder_input, MIN_DEPTH_M, OUTPUT_NAMES)
from hand_pose_ros.core.model_io import atomic_file
from hand_pose_ros.core.progress import ProgressBar
from hand_pose_ros.core.skeleton import NUM_JOINTS

# Hand extent used to size the heat-map blobs (CenterNet: sigma = diameter / 6).
HAND_DIAMETER_M = 0.18
MIN_SIGMA_CELLS = 0.6
MIN_VISIBLE_FRACTION = 0.2
CAMERAS = ('sr300', 'd435_640x480', 'nyu')
RENDER_CHUNK = 500


class _Block(nn.Module):
    """Residual pair of 3x3 convolutions (optionally dilated)."""

    def __init__(self, channels, dilation=1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, dilation, dilation, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, dilation, dilation, bias=False),
            nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(x + self.body(x))


def _down(in_channels, out_channels):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class HandFinderNet(nn.Module):
    """
    Encoder (strides 2, 4, 8, dilated blocks at 8 for context) and a decoder back to 4.

    Outputs at 1/4 of the strided image: ``heat`` (B, 1) logits, ``offset`` (B, 2) sub-cell
    (u, v) position in [0, 1) and ``depth`` (B, 1) centre depth in decimetres from 1 m. The
    three outputs share one 3x3 head (about 0.1 GMAC per 160x120 image in all).
    """

    def __init__(self, channels=(16, 24, 48, 32)):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stem = _down(2, c1)
        self.level2 = nn.Sequential(_down(c1, c2), _Block(c2))
        self.level3 = nn.Sequential(_down(c2, c3), _Block(c3, 1), _Block(c3, 2), _Block(c3, 4))
        self.fuse = nn.Sequential(nn.Conv2d(c2 + c3, c4, 1, bias=False), nn.BatchNorm2d(c4),
                                  nn.ReLU(inplace=True), _Block(c4))
        self.head = nn.Sequential(nn.Conv2d(c4, c4, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(c4, 4, 1))
        # Start with few positives (CenterNet's prior of 0.1).
        nn.init.constant_(self.head[-1].bias[:1], -2.19)

    def forward(self, x):
        fine = self.level2(self.stem(x))
        coarse = self.level3(fine)
        up = F.interpolate(coarse, size=fine.shape[-2:], mode='nearest')
        out = self.head(self.fuse(torch.cat([fine, up], dim=1)))
        return out[:, :1], torch.sigmoid(out[:, 1:3]), out[:, 3:]


def hand_targets(centers, cells_shape):
    """
    Return the training targets of one image.

    :param centers: (K, 5) per hand: u, v (strided pixels), depth (m), sigma (cells),
        positive (1) or ignored (0).
    :param cells_shape: (rows, cols) of the heat map.
    :return: heat (rows, cols) in [0, 1], weight (rows, cols) (0 around ignored hands),
        peaks (P, 2) int cell (row, col) of the positives, offset (P, 2), depth (P,).
    """
    rows, cols = cells_shape
    heat = np.zeros(cells_shape, dtype=np.float32)
    weight = np.ones(cells_shape, dtype=np.float32)
    grid_r, grid_c = np.mgrid[0:rows, 0:cols]
    peaks, offsets, depths = [], [], []
    for u, v, z, sigma, positive in np.asarray(centers, dtype=np.float64).reshape(-1, 5):
        cu, cv = u / CELL_PX, v / CELL_PX
        col, row = int(math.floor(cu)), int(math.floor(cv))
        inside = 0 <= row < rows and 0 <= col < cols
        if positive and not inside:
            continue
        blob = np.exp(-((grid_c - col) ** 2 + (grid_r - row) ** 2) / (2.0 * sigma * sigma))
        if positive:
            heat = np.maximum(heat, blob)
            peaks.append((row, col))
            offsets.append((cu - col, cv - row))
            depths.append((z - DEPTH_OFFSET_M) / DEPTH_UNIT_M)
        else:
            weight[blob > 0.05] = 0.0
    return (heat, weight, np.array(peaks, dtype=np.int64).reshape(-1, 2),
            np.array(offsets, dtype=np.float32).reshape(-1, 2),
            np.array(depths, dtype=np.float32))


def frame_centers(frame_joints, visible, intrinsics, stride):
    """
    Return the (K, 5) ``hand_targets`` rows of a labelled frame's hands in front of the camera.

    A hand is positive when its centre is inside the image and enough of its joints are
    seen; one centred outside the image, or mostly hidden, is ignored rather than negative.

    :param frame_joints: (K, 21, 3) metres.
    :param visible: (K, 21) bool, joints not occluded.
    """
    rows = []
    fx = math.sqrt(intrinsics.fx * intrinsics.fy) / stride
    for joints, seen in zip(frame_joints, visible):
        center = joints.mean(axis=0)
        if not center[2] > MIN_DEPTH_M:
            continue
        u, v, z = uvd_from_xyz(center, intrinsics)
        inside = 0 <= u < intrinsics.width and 0 <= v < intrinsics.height
        sigma = max(MIN_SIGMA_CELLS, HAND_DIAMETER_M * fx / z / CELL_PX / 6.0)
        rows.append((u / stride, v / stride, z, sigma,
                     float(inside and np.mean(seen) >= MIN_VISIBLE_FRACTION)))
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


def focal_loss(logits, heat, weight):
    """Return the penalty-reduced focal loss of CenterNet over the positive count."""
    p = torch.sigmoid(logits).clamp(1e-4, 1.0 - 1e-4)
    positive = heat.eq(1.0).float()
    pos = -torch.log(p) * (1.0 - p) ** 2 * positive
    neg = -torch.log(1.0 - p) * p ** 2 * (1.0 - heat) ** 4 * (1.0 - positive) * weight
    return (pos.sum() + neg.sum()) / positive.sum().clamp(min=1.0)


def render_frames(count, seed):
    """
    Render ``count`` synthetic frames (the engine's default scenes) as finder inputs and rows.

    Cameras cycle through ``CAMERAS`` (all 640x480, so every input is 2x120x160).

    :return: (inputs (N, 2, 120, 160) float16, hand rows (M, 5) float32, hands per frame
        (N,) int).
    """
    from hand_pose_ros.core import synth

    generators = [synth.SyntheticGenerator(CameraIntrinsics.from_preset(name), seed=seed + i)
                  for i, name in enumerate(CAMERAS)]
    inputs, centers = [], []
    for index in range(count):
        generator = generators[index % len(generators)]
        frame = generator.sample_frame()
        planes, stride = finder_input(frame.depth_m, generator.intrinsics)
        joints = np.stack([hand.joints_xyz for hand in frame.hands]).reshape(-1, NUM_JOINTS, 3)
        visible = np.stack([hand.visible for hand in frame.hands]).reshape(-1, NUM_JOINTS)
        inputs.append(planes.astype(np.float16))
        centers.append(frame_centers(joints, visible, generator.intrinsics, stride))
    return (np.stack(inputs), np.concatenate(centers),
            np.array([len(c) for c in centers], dtype=np.int64))


@dataclass(frozen=True)
class FinderTrainConfig:
    """
    Training of the hand finder (``hand_pose_train_finder``).

    :param output_dir: run folder: rendered frames, checkpoint, CSV log, curves.
    :param frames: synthetic frames rendered once and reused (with random flips).
    :param steps: optimiser steps (cosine learning-rate decay to 0).
    :param batch_size: frames per step.
    :param lr: peak AdamW learning rate.
    :param seed: data and initialisation seed (held-out sets use seeds >= 1000).
    :param num_threads: torch CPU threads (0: torch default).
    :param checkpoint_every: steps between checkpoints (the run resumes from the last).
    """

    output_dir: str = 'runs/hand_finder'
    frames: int = 15000
    steps: int = 6000
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 10000
    num_threads: int = 0
    checkpoint_every: int = 500

    def __post_init__(self):
        for name in ('frames', 'steps', 'batch_size', 'checkpoint_every'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'finder training {name} must be >= 1, got '
                                 f'{getattr(self, name)}')
        if not self.lr > 0 or self.num_threads < 0:
            raise ValueError('finder training lr must be > 0 and num_threads >= 0')


def training_frames(config, progress_stream=None):
    """
    Return (inputs, hand rows, row offsets per frame) of a run, rendering missing chunks.

    Chunks of up to ``RENDER_CHUNK`` frames are kept in ``output_dir/frames`` so a resumed or
    repeated run renders nothing twice.
    """
    directory = Path(config.output_dir) / 'frames'
    directory.mkdir(parents=True, exist_ok=True)
    size = min(RENDER_CHUNK, config.frames)
    chunks = -(-config.frames // size)
    bar = ProgressBar(chunks, progress_stream)
    inputs, rows, counts = [], [], []
    for chunk in range(chunks):
        # Named for the seed too: a run with another seed in the folder renders its own.
        path = directory / f'chunk_{config.seed}_{size}_{chunk:04d}.npz'
        if not path.is_file():
            x, c, n = render_frames(size, config.seed + 10 * chunk)
            with atomic_file(path) as stream:
                np.savez(stream, inputs=x, centers=c, counts=n)
        with np.load(path) as stored:
            inputs.append(stored['inputs'])
            rows.append(stored['centers'])
            counts.append(stored['counts'])
        bar.update(chunk + 1, 'rendered frame chunks')
    counts = np.concatenate(counts)[:config.frames]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return np.concatenate(inputs)[:config.frames], np.concatenate(rows), offsets


def _batch(inputs, rows, offsets, indices, rng):
    """Return (input tensor, heat, weight, batch index, peaks, offsets, depths) with flips."""
    x = inputs[indices].astype(np.float32)
    height, width = x.shape[2:]
    cells = (height // CELL_PX, width // CELL_PX)
    heats, weights, owners, peaks, offsets_uv, depths = [], [], [], [], [], []
    for b, index in enumerate(indices):
        hands = rows[offsets[index]:offsets[index + 1]].copy()
        if rng.random() < 0.5:
            x[b] = x[b, :, :, ::-1]
            hands[:, 0] = (width - 1) - hands[:, 0]
        if rng.random() < 0.5:
            x[b] = x[b, :, ::-1, :]
            hands[:, 1] = (height - 1) - hands[:, 1]
        heat, weight, peak, offset, depth = hand_targets(hands, cells)
        heats.append(heat)
        weights.append(weight)
        owners += [b] * len(peak)
        peaks.append(peak)
        offsets_uv.append(offset)
        depths.append(depth)
    return (torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.stack(heats))[:, None],
            torch.from_numpy(np.stack(weights))[:, None],
            torch.tensor(owners, dtype=torch.long), torch.from_numpy(np.concatenate(peaks)),
            torch.from_numpy(np.concatenate(offsets_uv)), torch.from_numpy(np.concatenate(depths)))


def finder_loss(net, batch):
    """Return (total, heat, offset, depth) losses of a batch (offset/depth at the peaks)."""
    x, heat_t, weight, owners, peaks, offset_t, depth_t = batch
    heat, offset, depth = net(x)
    heat_loss = focal_loss(heat, heat_t, weight)
    if len(peaks):
        rows, cols = peaks[:, 0], peaks[:, 1]
        offset_loss = (offset[owners, :, rows, cols] - offset_t).abs().mean()
        depth_loss = (depth[owners, 0, rows, cols] - depth_t).abs().mean()
    else:
        offset_loss = depth_loss = heat_loss.new_zeros(())
    return heat_loss + offset_loss + depth_loss, heat_loss, offset_loss, depth_loss


def train_finder(config, resume=False, progress_stream=None):
    """
    Train :class:`HandFinderNet` on rendered frames; return the path of its checkpoint.

    The checkpoint (``output_dir/checkpoint.pt``: weights, optimiser, step, RNG state) is
    written every ``checkpoint_every`` steps and at the end; ``resume`` continues from it.
    ``train.csv`` logs the losses and ``curves.png`` plots them.

    :raises FileNotFoundError: with ``resume``, when there is no checkpoint to resume from.
    """
    from hand_pose_ros.core.training import cosine_decay, plot_curves, write_csv

    path = Path(config.output_dir) / 'checkpoint.pt'
    if resume and not path.is_file():
        raise FileNotFoundError(f'cannot resume: no checkpoint {path} (train without resume '
                                f'to start one)')
    if not resume and path.is_file():
        raise ValueError(f'{config.output_dir} holds a finder run ({path}): resume it or '
                         f'choose another output folder')
    state = _resumable_state(path, config) if resume else None
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    inputs, rows, offsets = training_frames(config, progress_stream)
    torch.manual_seed(config.seed)
    net = HandFinderNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    rng = np.random.default_rng(config.seed)
    step, log = 0, []
    if state is not None:
        net.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        step, log = state['step'], state['log']
        rng.bit_generator.state = state['rng']
    net.train()
    bar = ProgressBar(config.steps, progress_stream)
    while step < config.steps:
        lr = cosine_decay(config.lr, step / config.steps)
        for group in optimizer.param_groups:
            group['lr'] = lr
        batch = _batch(inputs, rows, offsets, rng.integers(0, len(inputs), config.batch_size),
                       rng)
        total, heat, offset, depth = finder_loss(net, batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        step += 1
        log.append({'step': step, 'loss': total.item(), 'heat': heat.item(),
                    'offset': offset.item(), 'depth': depth.item(), 'lr': lr})
        bar.update(step, f'loss {total.item():.3f} (heat {heat.item():.3f}, offset '
                         f'{offset.item():.3f}, depth {depth.item():.3f}) lr {lr:.2e}')
        if step % config.checkpoint_every == 0 or step == config.steps:
            with atomic_file(path) as stream:
                torch.save({'model': net.state_dict(), 'optimizer': optimizer.state_dict(),
                            'step': step, 'log': log, 'rng': rng.bit_generator.state,
                            'config': asdict(config)}, stream)
            write_csv(Path(config.output_dir) / 'train.csv', list(log[0]), log)
            plot_curves(log, [], Path(config.output_dir) / 'curves.png')
    return path


# What a resumed run may change: its length, where it writes and how fast it runs.
_RESUME_MAY_CHANGE = ('steps', 'output_dir', 'num_threads', 'checkpoint_every')


def _resumable_state(path, config):
    """Return the checkpoint a run resumes from, checked before any frame is rendered."""
    state, _ = load_finder_checkpoint(path)
    if not {'optimizer', 'rng', 'log'} <= set(state):
        raise ValueError(f'{path}: a finder checkpoint without its optimiser and data state '
                         f'cannot be resumed')
    stored, wanted = state['config'], asdict(config)
    changed = sorted(key for key in {*stored, *wanted} if key not in _RESUME_MAY_CHANGE
                     and stored.get(key) != wanted.get(key))
    if changed:
        raise ValueError(f'cannot resume {path}: its {", ".join(changed)} '
                         f'{[stored.get(k) for k in changed]} differ from '
                         f'{[wanted.get(k) for k in changed]} (only '
                         f'{", ".join(_RESUME_MAY_CHANGE)} may change)')
    if config.steps <= state['step']:
        raise ValueError(f'{path} is at step {state["step"]}: resume with --steps above it')
    return state


def load_finder_checkpoint(path):
    """
    Return a checkpoint that :func:`train_finder` wrote, with its network's weights.

    :return: (state dict of the checkpoint, :class:`HandFinderNet` with its weights).
    :raises ValueError: when ``path`` holds something else (another network's checkpoint, a
        file torch cannot read).
    :raises OSError: when it cannot be read.
    """
    import pickle

    net = HandFinderNet()
    try:
        state = torch.load(path, weights_only=True)
        net.load_state_dict(state['model'])
        complete = {'config', 'step'} <= set(state)
    except (EOFError, LookupError, RuntimeError, TypeError, pickle.UnpicklingError):
        complete = False
    if not complete:
        raise ValueError(f'{path}: not a finder checkpoint (hand_pose_train_finder writes them '
                         f'as <output-dir>/checkpoint.pt)')
    return state, net


def export_finder(checkpoint_path, onnx_path):
    """
    Export a finder checkpoint's network to ONNX and check it; return the file's path.

    Batch and image size are dynamic axes (one graph serves every camera resolution); the
    exporter and opset are those of the pose networks (:func:`export.export_onnx`).
    """
    import warnings

    import onnx

    from hand_pose_ros.core.export import OPSET

    _, net = load_finder_checkpoint(checkpoint_path)
    net.eval()
    axes = {'depth': {0: 'batch', 2: 'height', 3: 'width'}}
    axes.update({name: {0: 'batch', 2: 'rows', 3: 'cols'} for name in OUTPUT_NAMES})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 2, 120, 160),), str(onnx_path),
                          input_names=['depth'], output_names=list(OUTPUT_NAMES),
                          opset_version=OPSET, dynamic_axes=axes, do_constant_folding=True,
                          dynamo=False)
    onnx.checker.check_model(str(onnx_path))
    return Path(onnx_path)


def _finder_path(card_path, card):
    """Return where a card's finder file goes: ``<card name>_finder.onnx`` beside it."""
    return Path(card_path).parent / f'{card.get("name") or Path(card_path).stem}_finder.onnx'


@contextlib.contextmanager
def _replaced_when_whole(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block ends."""
    partial = path.with_name(f'{path.stem}.partial{path.suffix}')
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# Fusion weights an attached finder starts with, until ``hand_pose_evaluate
# --fit-hand-score`` fits them: the sum of both sources' logits.
INITIAL_FUSION_WEIGHTS = (0.0, 0.0, 1.0, 1.0)


def attach_finder(checkpoint_path, card_path):
    """
    Export a finder checkpoint beside a model card and record it in the card.

    Writes ``<card name>_finder.onnx``, lists it (size, sha256) under the card's ``files``
    and adds the ``finder`` section (file, fusion weights, training run); refit the fusion
    and hand score afterwards (``hand_pose_evaluate --fit-hand-score``).

    :return: path of the ONNX file.
    """
    from hand_pose_ros.core import model_io

    card_path = Path(card_path)
    # Not verified: attaching again must be able to replace a damaged finder file.
    card = model_io.read_card(card_path, verify=False)
    state, _ = load_finder_checkpoint(checkpoint_path)
    onnx_path = _finder_path(card_path, card)
    with _replaced_when_whole(onnx_path) as partial:
        export_finder(checkpoint_path, partial)
    card['files'][onnx_path.name] = model_io.file_record(onnx_path)
    card['finder'] = {'onnx': onnx_path.name, 'fusion_weights': list(INITIAL_FUSION_WEIGHTS),
                      'training': {**state['config'], 'steps_done': state['step']}}
    model_io.write_card(card_path, card)
    return onnx_path


def copy_finder(source_card_path, card_path):
    """
    Give a model card the learned hand finder of another card.

    The source card is verified first (a finder file that does not match its checksum is
    not copied). Its finder file is copied beside ``card_path`` as ``<card name>_finder.onnx``
    and listed there, and the card gets the source's ``finder`` section, fusion weights and
    training run included. The fusion depends on the localiser and the finder only, so it
    carries over; the hand score reads the pose network's confidences, so refit it for a
    different network (``hand_pose_evaluate --fit-hand-score``).

    :return: path of the copied ONNX file.
    :raises ValueError: the source card has no finder, or is the card itself.
    """
    from hand_pose_ros.core import model_io

    source_card_path, card_path = Path(source_card_path), Path(card_path)
    if source_card_path.resolve() == card_path.resolve():
        raise ValueError(f'{card_path}: a card cannot take the finder from itself')
    source = model_io.read_card(source_card_path, verify=True)
    if 'finder' not in source:
        raise ValueError(f'model card {source_card_path} has no learned hand finder')
    if not isinstance(source['finder'], dict):
        raise model_io.ModelFileError(f'model card {source_card_path}: "finder" must be a '
                                      f'mapping, got {source["finder"]!r}')
    # A file beside the source card that it lists (and so has verified), nothing else.
    source_file = model_io.card_file(source_card_path, source, 'onnx', source['finder'])
    card = model_io.read_card(card_path, verify=False)
    onnx_path = _finder_path(card_path, card)
    with _replaced_when_whole(onnx_path) as partial:
        shutil.copyfile(source_file, partial)
    card['files'][onnx_path.name] = model_io.file_record(onnx_path)
    card['finder'] = {**source['finder'], 'onnx': onnx_path.name}
    model_io.write_card(card_path, card)
    return onnx_path
