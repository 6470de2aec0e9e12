"""
Training loop for the depth hand pose networks.

Data flow: a *source* (the synthetic engine, or a dataset reader) makes context crops
(:func:`hand_pose_ros.core.augment.context_spec`) around the oracle hand centre; render
worker processes write them in chunks to ``<output_dir>/pool/``; the trainer keeps the
newest ``pool_size`` of them in memory and draws every batch from that pool with fresh
augmentation (:func:`hand_pose_ros.core.augment.augment_crop`). Rendering and training
thus run at their own speeds: training never waits for the renderer, and a slow renderer
only means each rendered crop is reused under more augmentations. The pool on disk also
makes a resumed run start at once. A network with a ``color`` input (``joint_groups_rgb``)
gets the colour crop of the same window with each depth crop, geometrically jittered alike;
only the synthetic engine renders colour registered to depth.

Every ``checkpoint_every`` steps the trainer evaluates on a held-out set (a different
seed, crops around the oracle centre, no augmentation), writes ``checkpoint_last.pt``
(and ``checkpoint_best.pt`` when the held-out error improves), ``train.csv``,
``eval.csv`` and ``curves.png``. ``resume=True`` continues from ``checkpoint_last.pt``.
Checkpoints hold tensors and plain values only, so they load with
``torch.load(weights_only=True)``.
"""

import contextlib
from dataclasses import dataclass, field, fields, replace
import glob
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time

import numpy as np

from hand_pose_ros.core import augment, augment_workers
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.config_io import dataclass_from_dict
from hand_pose_ros.core.crop import color_input, crop_color, crop_depth, CropSpec, \
    CropTransform, make_transform
from hand_pose_ros.core.model_io import atomic_file
from hand_pose_ros.core.progress import ProgressBar

LOG = logging.getLogger(__name__)

LR_SCHEDULES = ('cosine', 'step', 'constant')
CHECKPOINT_LAST = 'checkpoint_last.pt'
CHECKPOINT_BEST = 'checkpoint_best.pt'
# Steps between loads of newly rendered chunks into the crop pool.
REFRESH_EVERY = 20
TRAIN_FIELDS = ('step', 'loss', 'lr', 'samples_per_s', 'pool_size', 'elapsed_s')


@dataclass
class TrainConfig:
    """
    Everything a training run needs; YAML files map onto these fields.

    :param output_dir: run folder (checkpoints, logs, curves, crop pool).
    :param model: registry name for ``build_model``.
    :param model_cfg: keyword arguments of the model (``input_size`` is filled in).
    :param crop: :class:`CropSpec` fields (input_size, cube_size_m, interpolation).
    :param context: context crop factor for augmentation (see :mod:`augment`).
    :param augment: :class:`AugmentConfig` fields (defaults: the papers' ranges).
    :param data: training source: ``{'type': 'synthetic', 'camera': preset, 'scene': {...},
        'sensor': {...}}`` or ``{'type': <dataset>, 'root': DIR, ...reader options}``.
    :param eval_data: held-out source (default: ``data`` with seed ``eval_seed``).
    :param eval_frames: held-out crops evaluated at every checkpoint (0 disables).
    :param eval_seed: seed of the held-out synthetic set that picks the best checkpoint (a
        validation set: the test set of ``hand_pose_evaluate`` uses seed 1000).
    :param pool_size: context crops kept in memory.
    :param min_pool: crops needed before the first step.
    :param render_workers: background render processes (0: render ``pool_size`` crops in
        the main process first, then train on that fixed pool).
    :param fresh_ratio: new crops rendered per trained sample (after ``min_pool``); workers
        pause when ahead, leaving the CPU to training (each crop is then reused under about
        1 / fresh_ratio augmentations).
    :param augment_workers: processes that augment batches ahead of the training step (0:
        the trainer's own process does it); the same batches either way. For GPUs, whose
        steps outrun one process's augmentation.
    :param chunk_size: crops per pool file.
    :param steps: total optimisation steps.
    :param batch_size: crops per step.
    :param lr: peak learning rate (Adam).
    :param weight_decay: Adam weight decay.
    :param lr_schedule: 'cosine' (to 0 after warm-up), 'step' or 'constant'.
    :param warmup_steps: linear warm-up steps.
    :param lr_step_size: steps between decays of the 'step' schedule.
    :param lr_gamma: decay factor of the 'step' schedule.
    :param seed: seed of the model initialisation, batches, augmentation and rendering.
    :param checkpoint_every: steps between checkpoints, evaluations and plots.
    :param log_every: steps between rows of ``train.csv``.
    :param device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
    :param num_threads: torch CPU threads (0: torch default).
    :param init_from: model name or card path whose weights start a new run (fine-tuning;
        the network, its config and the crop must match); ignored when resuming.
    :param init_widen: let ``init_from`` be a narrower model of the same network (a smaller
        ``width`` or ``head_channels``, by whole factors; A2J only): the wider network
        starts out computing the same function (see :mod:`hand_pose_ros.core.models.widen`).
    :param freeze_batchnorm: keep the BatchNorm layers in inference mode while training
        (their running statistics stay those of the start model; their scale and shift
        still learn): for fine-tuning on a small pool, whose statistics would otherwise
        replace those learnt on the full training data.
    """

    output_dir: str = 'runs/default'
    model: str = 'a2j'
    model_cfg: dict = field(default_factory=lambda: {
        'backbone': 'resnet18', 'width': 0.25, 'head_channels': 64})
    crop: dict = field(default_factory=lambda: {
        'input_size': 96, 'cube_size_m': [0.2, 0.2, 0.3], 'interpolation': 'nearest'})
    context: float = 1.5
    augment: dict = field(default_factory=dict)
    data: dict = field(default_factory=lambda: {'type': 'synthetic', 'camera': 'sr300'})
    eval_data: dict = None
    eval_frames: int = 300
    eval_seed: int = 2000
    pool_size: int = 20000
    min_pool: int = 256
    render_workers: int = 1
    fresh_ratio: float = 0.25
    augment_workers: int = 0
    chunk_size: int = 64
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = 'cosine'
    warmup_steps: int = 200
    lr_step_size: int = 10000
    lr_gamma: float = 0.1
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = 'auto'
    num_threads: int = 0
    init_from: str = None
    init_widen: bool = False
    freeze_batchnorm: bool = False

    def __post_init__(self):
        self.crop_spec = CropSpec.from_dict(
            {k: tuple(v) if isinstance(v, list) else v for k, v in self.crop.items()})
        self.augment_config = augment.AugmentConfig.from_dict(self.augment)
        augment.context_spec(self.crop_spec, self.context)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f'lr_schedule must be one of {LR_SCHEDULES}, '
                             f'got {self.lr_schedule!r}')
        for name in ('steps', 'batch_size', 'pool_size', 'min_pool', 'chunk_size',
                     'checkpoint_every', 'log_every'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be a positive integer, got {getattr(self, name)}')
        for name in ('render_workers', 'augment_workers', 'eval_frames', 'warmup_steps',
                     'num_threads'):
            if int(getattr(self, name)) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f'lr must be positive and weight_decay >= 0, '
                             f'got {self.lr}, {self.weight_decay}')
        if not 0 < self.fresh_ratio <= 10:
            raise ValueError(f'fresh_ratio must be in (0, 10], got {self.fresh_ratio}')
        if self.min_pool > self.pool_size:
            raise ValueError(f'min_pool ({self.min_pool}) exceeds pool_size ({self.pool_size})')
        if self.device not in ('auto', 'cpu', 'cuda'):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if 'type' not in self.data:
            raise ValueError("data needs a 'type' ('synthetic' or a dataset name)")
        if 'seed' in self.data:
            # One seed for every worker and restart would render the same scenes over again.
            raise ValueError('data takes no seed: training scenes are seeded from the run '
                             'seed, each worker and restart its own (set seed instead)')

    def to_dict(self):
        """Return the config as plain values (YAML / checkpoint friendly)."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, values):
        """Build from a plain dict; unknown keys raise ValueError."""
        return dataclass_from_dict(cls, values, 'training config', lists_to_tuples=False)

    @classmethod
    def from_yaml(cls, path):
        """Load a YAML config file."""
        import yaml

        with open(path, 'r') as stream:
            values = yaml.safe_load(stream) or {}
        if not isinstance(values, dict):
            raise ValueError(f'{path}: a training config must be a YAML mapping')
        return cls.from_dict(values)

    def held_out_data(self):
        """
        Return the held-out source description.

        :raises ValueError: recorded training data without ``eval_data``: a dataset reader
            ignores the seed, so the held-out frames would be training frames.
        """
        if self.eval_data is not None:
            return self.eval_data
        kind = self.data.get('type', 'synthetic')
        if kind != 'synthetic':
            raise ValueError(
                f'training on {kind} data needs eval_data, a held-out split of its own '
                '(another root, label file or subjects); without it the held-out error would '
                'be measured on training frames. Or set eval_frames: 0')
        return dict(self.data, seed=self.eval_seed)


def cosine_decay(lr, progress):
    """Return ``lr`` decayed on a half cosine to 0 at ``progress`` 1 (clamped to [0, 1])."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def learning_rate(step, config):
    """Return the learning rate of (0-based) ``step`` under the config's schedule."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == 'cosine':
        span = max(1, config.steps - config.warmup_steps)
        return cosine_decay(config.lr, (step - config.warmup_steps) / span)
    if config.lr_schedule == 'step':
        return config.lr * config.lr_gamma ** (step // config.lr_step_size)
    return config.lr


# --------------------------------------------------------------------------- sources


def oracle_center(joints_xyz, joint_mask):
    """Return the (3,) centroid of the labelled joints (the 'oracle' hand centre)."""
    return np.asarray(joints_xyz)[np.asarray(joint_mask, dtype=bool)].mean(axis=0)


def crop_labelled(depth_m, intrinsics, joints_xyz, joint_mask, spec, center_xyz=None):
    """
    Crop a labelled frame around its (oracle) centre.

    :return: (:class:`CropResult`, (21, 3) normalised joints with NaN where unlabelled).
    """
    center = oracle_center(joints_xyz, joint_mask) if center_xyz is None else center_xyz
    result = crop_depth(depth_m, intrinsics, center, spec)
    joints = result.transform.normalized_from_xyz(joints_xyz)
    joints[~np.asarray(joint_mask, dtype=bool)] = np.nan
    return result, joints


class SyntheticCrops:
    """
    Crops of freshly rendered synthetic scenes (only the crop window is rendered).

    :param spec: crop spec of the crops to make.
    :param seed: generator seed.
    :param camera: camera preset of the simulated sensor, or a mapping of its intrinsics
        (``fx``, ``fy``, ``cx``, ``cy``, ``width``, ``height``).
    :param scene: options of the synthetic scene sampler.
    :param sensor: options of the simulated sensor.
    :param color: also render and crop the colour image (``CropResult.color``).
    """

    def __init__(self, spec, seed, camera='sr300', scene=None, sensor=None, color=False):
        from hand_pose_ros.core.synth.generator import SyntheticGenerator
        from hand_pose_ros.core.synth.scene import SceneConfig
        from hand_pose_ros.core.synth.sensor import SensorConfig

        self.spec = spec
        self.color = bool(color)
        self.intrinsics = CameraIntrinsics.from_spec(camera)
        self.generator = SyntheticGenerator(
            self.intrinsics, scene=dataclass_from_dict(SceneConfig, scene),
            sensor=dataclass_from_dict(SensorConfig, sensor), seed=seed)

    def next_labelled(self):
        """
        Return (frame, intrinsics, joints_xyz, mask, center) of one rendered window.

        ``frame`` is the window's synthetic ``Frame`` (``depth_m``; ``color`` when this
        source renders colour).
        """
        for _ in range(100):
            scene = self.generator.sample_scene()
            joints = np.asarray(scene.hands[0].keypoints_xyz, dtype=np.float64)
            mask = np.ones(len(joints), dtype=bool)
            center = oracle_center(joints, mask)
            try:
                transform = make_transform(self.intrinsics, center, self.spec)
            except ValueError:
                continue  # the hand's centre left the image: draw another scene
            u_min, v_min, u_max, v_max = transform.window_uv
            u0, v0 = int(math.floor(u_min)) - 1, int(math.floor(v_min)) - 1
            window = self.intrinsics.window(u0, v0, int(math.ceil(u_max)) + 2 - u0,
                                            int(math.ceil(v_max)) + 2 - v0)
            frame = self.generator.render(scene, intrinsics=window, color=self.color)
            return frame, window, joints, mask, center
        raise ValueError('synthetic scenes keep placing the hand outside the image; '
                         'check the scene options')

    def next_crop(self):
        """Return (CropResult, normalised joints (21, 3), mask (21,), joints_xyz (21, 3))."""
        frame, window, joints, mask, center = self.next_labelled()
        result, joints_norm = crop_labelled(frame.depth_m, window, joints, mask, self.spec,
                                            center)
        if self.color:
            result = replace(result, color=crop_color(frame.color, result.transform))
        return result, joints_norm, mask, joints


class DatasetCrops:
    """
    Crops of a dataset reader's frames in a seeded random order (oracle centres).

    :param spec: crop spec of the crops to make.
    :param seed: shuffling seed.
    :param name: dataset name for :func:`hand_pose_ros.core.datasets.open_dataset`.
    :param root: dataset folder.
    :param options: reader options.
    """

    color = False  # the readers give no colour registered to the depth

    def __init__(self, spec, seed, name, root, **options):
        from hand_pose_ros.core.datasets import open_dataset

        self.spec = spec
        self.dataset = open_dataset(name, root, **options)
        self.rng = np.random.default_rng(seed)
        self._order = []
        self.unreadable = set()   # dataset indices whose files could not be read

    def next_crop(self):
        """Return (CropResult, normalised joints (21, 3), mask (21,), joints_xyz (21, 3))."""
        tried = set()
        while len(tried) < len(self.dataset):
            if not self._order:
                self._order = list(self.rng.permutation(len(self.dataset)))
            index = int(self._order.pop())
            if index in tried:
                continue
            tried.add(index)
            try:
                sample = self.dataset[index]
            except OSError as error:   # a frame missing from the release, a damaged file
                if index not in self.unreadable:
                    self.unreadable.add(index)
                    LOG.warning('training frame %d of the dataset skipped: %s', index, error)
                continue
            if sample.joint_mask.sum() == 0:
                continue
            try:
                result, joints = crop_labelled(sample.depth_m, sample.intrinsics,
                                               sample.joints_xyz, sample.joint_mask, self.spec)
            except ValueError:
                continue  # centre outside the image
            return result, joints, sample.joint_mask, sample.joints_xyz
        raise ValueError('no frame of the dataset gives a valid crop')


def render_seed(seed, step, worker):
    """
    Return the scene seed of one renderer of a run (re)started at ``step``.

    Hashed from (seed, step, worker): each worker of each (re)start renders scenes of its
    own, and no training seed renders the scenes of the evaluation seeds (1000, 2000, ...),
    which the generator would draw from ``seed`` itself.
    """
    return int(np.random.SeedSequence([seed, step, worker]).generate_state(1)[0])


def make_source(data, spec, seed, color=False):
    """
    Return the crop source described by a ``data`` dict (see :class:`TrainConfig`).

    :param color: the crops must carry colour (models with a ``color`` input); only the
        synthetic engine renders it.
    """
    options = dict(data)
    kind = options.pop('type')
    seed = int(options.pop('seed', seed))
    if kind == 'synthetic' and 'root' not in options:
        return SyntheticCrops(spec, seed, color=color, **options)
    if color:
        raise ValueError(f'a model with a colour input trains on synthetic data only (the '
                         f'{kind!r} reader gives no colour registered to the depth)')
    return DatasetCrops(spec, seed, kind, **options)


# --------------------------------------------------------------------------- crop pool


def render_chunk(source, count):
    """Return a pool chunk dict of ``count`` context crops (with ``colors`` when in colour)."""
    size = source.spec.input_size
    chunk = {'patches': np.empty((count, size, size), dtype=np.float16),
             'joints': np.empty((count, 21, 3), dtype=np.float32),
             'mask': np.empty((count, 21), dtype=bool)}
    if source.color:
        chunk['colors'] = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        result, joints_norm, mask, _ = source.next_crop()
        chunk['patches'][i] = result.patch
        chunk['joints'][i] = joints_norm
        chunk['mask'][i] = mask
        if 'colors' in chunk:
            chunk['colors'][i] = result.color
    return chunk


def save_chunk(directory, name, chunk):
    """Write a chunk atomically (readers never see a half-written file)."""
    with atomic_file(os.path.join(directory, name)) as stream:
        np.savez(stream, **chunk)


def next_chunk_index(directory, tag):
    """Return the first unused index of ``chunk_<tag>_<index>.npz`` files in ``directory``."""
    existing = glob.glob(os.path.join(directory, f'chunk_{tag}_*.npz'))
    return 1 + max([int(p.rsplit('_', 1)[1][:-4]) for p in existing], default=-1)


def render_worker(data, spec_dict, seed, tag, directory, chunk_size, stop, allowed, rendered,
                  color=False):
    """
    Render context-crop chunks into ``directory`` until ``stop`` is set (process target).

    :param tag: unique name part of this worker's files (``chunk_<tag>_<index>.npz``).
    :param allowed: shared counter of crops all workers may have rendered so far.
    :param rendered: shared counter of crops all workers have rendered (claimed).
    :param color: render colour crops too (see :func:`make_source`).
    """
    augment_workers.ignore_interrupts()
    spec = CropSpec.from_dict(spec_dict)
    source = make_source(data, spec, seed, color)
    index = next_chunk_index(directory, tag)
    parent = os.getppid()
    # A killed trainer cannot set ``stop``: also end when reparented.
    while not stop.is_set() and os.getppid() == parent:
        with rendered.get_lock():
            # Below the allowance a worker renders a whole chunk, so a pool smaller than a
            # chunk still fills (all workers together overshoot by less than a chunk each).
            claimed = rendered.value < allowed.value
            if claimed:
                rendered.value += chunk_size
        if not claimed:
            time.sleep(0.2)
            continue
        save_chunk(directory, f'chunk_{tag}_{index:06d}.npz', render_chunk(source, chunk_size))
        index += 1


class CropPool:
    """
    The newest ``capacity`` context crops, fed from chunk files on disk.

    Chunk files whose crops have all been overwritten in the ring are deleted, so the
    folder holds about ``capacity`` crops: enough to refill the pool on resume.

    :param directory: chunk folder.
    :param capacity: crops kept in memory (a ring buffer).
    :param size: context patch side.
    :param color: the crops carry colour (chunks with ``colors``), for models with a
        ``color`` input.
    :param allocate: ``allocate(shape, dtype)`` makes the ring's arrays (default
        ``numpy.empty``; a :class:`~hand_pose_ros.core.augment_workers.SharedAllocator`
        for augmentation workers).
    """

    def __init__(self, directory, capacity, size, color=False, allocate=np.empty):
        self.directory = directory
        self.capacity = capacity
        self.patches = allocate((capacity, size, size), np.float16)
        self.joints = allocate((capacity, 21, 3), np.float32)
        self.masks = allocate((capacity, 21), bool)
        self.colors = allocate((capacity, size, size, 3), np.uint8) if color else None
        self.count = 0
        self._next = 0
        self._seen = set()
        self._loaded = []  # (path, crops) in load order

    def __len__(self):
        return self.count

    def refresh(self):
        """Load chunk files not seen yet (oldest first); return the number of new crops."""
        paths = sorted(glob.glob(os.path.join(self.directory, 'chunk_*.npz')),
                       key=lambda p: (os.path.getmtime(p), p))
        new = [p for p in paths if p not in self._seen]
        self._seen.update(new)
        added = 0
        for path in new:
            with np.load(path) as chunk:
                if self.colors is not None and 'colors' not in chunk.files:
                    raise ValueError(f'{path} has no colour crops: it was rendered for a '
                                     f'depth-only model (remove the pool folder)')
                crops = self.add(chunk['patches'], chunk['joints'], chunk['mask'],
                                 chunk['colors'] if self.colors is not None else None)
            self._loaded.append((path, crops))
            added += crops
        self._prune()
        return added

    def _prune(self):
        """Delete the files whose crops no longer live in the ring."""
        kept, newest = 0, []
        for path, crops in reversed(self._loaded):
            if kept >= self.capacity:
                os.remove(path)
            else:
                newest.append((path, crops))
            kept += crops
        self._loaded = newest[::-1]

    def add(self, patches, joints, masks, colors=None):
        """Append crops, overwriting the oldest when full; return how many were added."""
        if (colors is None) != (self.colors is None):
            raise ValueError('colour crops go to a colour pool, and only there')
        for i in range(len(masks)):
            self.patches[self._next] = patches[i]
            self.joints[self._next] = joints[i]
            self.masks[self._next] = masks[i]
            if colors is not None:
                self.colors[self._next] = colors[i]
            self._next = (self._next + 1) % self.capacity
            self.count = min(self.count + 1, self.capacity)
        return len(masks)

    @property
    def arrays(self):
        """Return the ring's arrays by name (see :func:`augment_workers.augment_batch`)."""
        arrays = {'patches': self.patches, 'joints': self.joints, 'masks': self.masks}
        if self.colors is not None:
            arrays['colors'] = self.colors
        return arrays

    def batch(self, rng, batch_size, config):
        """
        Return an augmented batch: inputs, joints (B, 21, 3), valid (B, 21).

        ``inputs`` is {'depth': (B, 1, S, S)} plus 'color': (B, 3, S, S) from a colour pool.
        """
        out = {name: np.empty(shape, dtype) for name, (shape, dtype) in
               augment_workers.batch_shapes(batch_size, config.crop_spec.input_size,
                                            self.colors is not None).items()}
        indices, seed = augment_workers.draw_batch(rng, self.count, batch_size)
        augment_workers.augment_batch(self.arrays, indices, seed, config, out)
        return augment_workers.split_batch(out)


# --------------------------------------------------------------------------- evaluation


def make_eval_set(source, count):
    """
    Return a held-out set dict: crops, targets and crop geometry for metric errors.

    Colour crops (a source with ``color``) are kept as ``colors`` (N, 3, S, S) float32 in
    [0, 1], the layout the networks take.
    """
    size = source.spec.input_size
    color = source.color
    out = {'patches': np.empty((count, 1, size, size), dtype=np.float32),
           'joints_xyz': np.empty((count, 21, 3)), 'mask': np.empty((count, 21), dtype=bool),
           'center_xyz': np.empty((count, 3)), 'image_center_uv': np.empty((count, 2)),
           'linear': np.empty((count, 2, 2)), 'intrinsics': np.empty((count, 6)),
           'half_depth_m': np.empty(count)}
    if color:
        out['colors'] = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        result, _, mask, joints_xyz = source.next_crop()
        transform = result.transform
        intrinsics = transform.intrinsics
        out['patches'][i, 0] = result.patch
        if color:
            out['colors'][i] = color_input(result.color)
        out['joints_xyz'][i] = joints_xyz
        out['mask'][i] = mask
        out['center_xyz'][i] = transform.center_xyz
        out['image_center_uv'][i] = transform.image_center_uv
        out['linear'][i] = transform.linear
        out['intrinsics'][i] = (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy,
                                intrinsics.width, intrinsics.height)
        out['half_depth_m'][i] = transform.half_depth_m
    return out


def eval_transform(eval_set, index):
    """Return the :class:`CropTransform` of held-out crop ``index``."""
    fx, fy, cx, cy, width, height = eval_set['intrinsics'][index]
    return CropTransform(
        intrinsics=CameraIntrinsics(fx, fy, cx, cy, int(width), int(height)),
        center_xyz=eval_set['center_xyz'][index],
        image_center_uv=eval_set['image_center_uv'][index],
        linear=eval_set['linear'][index], half_depth_m=float(eval_set['half_depth_m'][index]),
        input_size=eval_set['patches'].shape[-1])


def run_model(model, inputs, device):
    """
    Run a network on a batch of numpy inputs; return its output dict.

    :param inputs: {'depth': (B, 1, S, S), optionally 'color': (B, 3, S, S)} float32; the
        model takes those its ``input_names`` name, in that order.
    """
    import torch

    missing = [name for name in model.input_names if name not in inputs]
    if missing:
        raise ValueError(f'this network needs the inputs {list(model.input_names)}; the '
                         f'crops lack {missing}')
    return model(*[torch.from_numpy(inputs[name]).to(device) for name in model.input_names])


def evaluate(model, eval_set, device, batch_size=64):
    """Return {'mean_mm', 'median_mm', 'per_joint_mm'} of a model on a held-out set."""
    import torch

    was_training = model.training
    model.eval()
    predictions = []
    inputs = {'depth': eval_set['patches']}
    if 'colors' in eval_set:
        inputs['color'] = eval_set['colors']
    with torch.no_grad():
        for start in range(0, len(eval_set['patches']), batch_size):
            batch = {name: array[start:start + batch_size] for name, array in inputs.items()}
            predictions.append(run_model(model, batch, device)['joints'].float().cpu().numpy())
    model.train(was_training)
    predictions = np.concatenate(predictions)
    errors = np.full(eval_set['mask'].shape, np.nan)
    for i, joints_norm in enumerate(predictions):
        xyz = eval_transform(eval_set, i).xyz_from_normalized(joints_norm)
        errors[i] = np.linalg.norm(xyz - eval_set['joints_xyz'][i], axis=-1) * 1000.0
    errors[~eval_set['mask']] = np.nan
    return {'mean_mm': float(np.nanmean(errors)), 'median_mm': float(np.nanmedian(errors)),
            'per_joint_mm': np.nanmean(errors, axis=0).tolist()}


# --------------------------------------------------------------------------- logs


# What a resumed run may set otherwise than the run it continues: its length, where and how
# fast it runs, how often it reports, and its start model (ignored on resume: the
# checkpoint holds the weights). Anything else would change the run midway.
RESUME_MAY_CHANGE = ('steps', 'output_dir', 'device', 'num_threads', 'render_workers',
                     'augment_workers', 'checkpoint_every', 'log_every', 'init_from')


def write_csv(path, header, rows):
    """Write rows (dicts) to a CSV file (atomically: a kill leaves the previous file)."""
    lines = [','.join(header)] + [','.join(_format(row[k]) for k in header) for row in rows]
    with atomic_file(path) as stream:
        stream.write(('\n'.join(lines) + '\n').encode('utf-8'))


def _format(value):
    return f'{value:.6g}' if isinstance(value, float) else str(value)


def read_csv(path):
    """Read a CSV written by :func:`write_csv` into a list of float dicts."""
    if not os.path.isfile(path):
        return []
    with open(path, 'r') as stream:
        header = stream.readline().strip().split(',')
        return [dict(zip(header, map(float, line.strip().split(','))))
                for line in stream if line.strip()]


def _smooth(values, window):
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3:
        return values
    kernel = np.ones(min(window, len(values))) / min(window, len(values))
    padded = np.concatenate([np.full(len(kernel) - 1, values[0]), values])
    return np.convolve(padded, kernel, mode='valid')


def plot_curves(train_rows, eval_rows, path, width=900, height=620):
    """Draw the training loss (log scale) and held-out error curves into a PNG (Pillow)."""
    from PIL import Image, ImageDraw

    image = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(image)
    panels = [('training loss (log10, smoothed)', train_rows, 'loss', True, (31, 119, 180)),
              ('held-out mean 3D error (mm)', eval_rows, 'mean_mm', False, (214, 39, 40))]
    panel_height = height // 2
    max_step = max([r['step'] for r in train_rows + eval_rows] + [1])
    for p, (title, rows, key, log_scale, colour) in enumerate(panels):
        top = p * panel_height
        left, right, upper, lower = 70, width - 20, top + 30, top + panel_height - 35
        draw.rectangle([left, upper, right, lower], outline='black')
        draw.text((left, top + 10), title, fill='black')
        draw.text((right - 60, lower + 8), f'step {max_step}', fill='black')
        values = [r[key] for r in rows if math.isfinite(r[key]) and (r[key] > 0 or not log_scale)]
        steps = [r['step'] for r in rows if math.isfinite(r[key])
                 and (r[key] > 0 or not log_scale)]
        if not values:
            continue
        values = np.log10(values) if log_scale else np.asarray(values)
        if log_scale:
            values = _smooth(values, 20)
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        for frac in (0.0, 0.5, 1.0):
            value = low + frac * (high - low)
            y = lower - frac * (lower - upper)
            label = f'{10 ** value:.3g}' if log_scale else f'{value:.1f}'
            draw.text((5, y - 6), label, fill='black')
            draw.line([left, y, left + 5, y], fill='black')
        points = [(left + (right - left) * s / max_step,
                   lower - (lower - upper) * (v - low) / (high - low))
                  for s, v in zip(steps, values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if len(points) < 50 else []:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    image.save(path)


# --------------------------------------------------------------------------- training


def resolve_device(name):
    """Return the torch device for 'auto', 'cpu' or 'cuda'."""
    import torch

    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


@contextlib.contextmanager
def deferred_interrupts():
    """
    Hold Ctrl-C (and any signal whose handler raises KeyboardInterrupt) until the block ends.

    The interrupt is raised once the block has finished (not if it raised itself). Outside
    the main thread, where signal handlers cannot be set, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    held = [number for number in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(number) is signal.default_int_handler]
    previous = {number: signal.signal(number, lambda number, frame: received.append(number))
                for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise KeyboardInterrupt


def build_training_model(config):
    """
    Build the configured model with the crop's input size (and, for A2J, its half depth).

    A2J's depth loss measures errors in millimetres through ``cube_half_depth_mm``: it must
    be half the crop cube's depth, or the loss's 3 mm knee (tau2) is some other length.
    """
    import inspect

    from hand_pose_ros.core.models import build_model, MODELS

    model_cfg = dict(config.model_cfg)
    size = config.crop_spec.input_size
    if model_cfg.setdefault('input_size', size) != size:
        raise ValueError(f"model_cfg input_size {model_cfg['input_size']} differs from the "
                         f'crop input_size {size}')
    model_class = MODELS.get(config.model)
    if model_class is not None and 'cube_half_depth_mm' in inspect.signature(
            model_class.__init__).parameters:
        half_depth_mm = config.crop_spec.cube_size_m[2] * 500.0
        if abs(model_cfg.setdefault('cube_half_depth_mm', half_depth_mm) - half_depth_mm) > 1e-6:
            raise ValueError(f"model_cfg cube_half_depth_mm {model_cfg['cube_half_depth_mm']} "
                             f'is not half the crop cube depth ({half_depth_mm:g} mm)')
    return build_model(config.model, **model_cfg)


def load_checkpoint(path):
    """Load a checkpoint dict safely (``weights_only=True``)."""
    import torch

    if not os.path.isfile(path):
        raise ValueError(f'checkpoint {path!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: B902 - report any unpickling failure with the file
        raise ValueError(f'checkpoint {path!r} cannot be loaded: {error}') from None


def model_from_checkpoint(path):
    """Return (model, TrainConfig, checkpoint dict) rebuilt from a checkpoint file."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(json.loads(checkpoint['config']))
    model = build_training_model(config)
    model.load_state_dict(checkpoint['model'])
    model.eval()
    return model, config, checkpoint


class Trainer:
    """
    One training run (see the module docstring).

    :param config: :class:`TrainConfig`.
    :param resume: continue from ``<output_dir>/checkpoint_last.pt``.
    :param progress_stream: where the progress bar goes (default stderr).
    """

    def __init__(self, config, resume=False, progress_stream=None):
        import torch

        self.config = config
        self.output_dir = config.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        self.pool_dir = os.path.join(self.output_dir, 'pool')
        os.makedirs(self.pool_dir, exist_ok=True)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        # The crop size is fixed: let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = self.device.type == 'cuda'
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model = build_training_model(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.step = 0
        self.best_error_mm = math.inf
        self.start_model = None
        self.train_rows = []
        self.eval_rows = []
        if resume:
            self._resume()
        elif config.init_from:
            self._initialise_from(config.init_from)
        self.progress = ProgressBar(config.steps, progress_stream)
        self.context_spec = augment.context_spec(config.crop_spec, config.context)
        self.color = 'color' in self.model.input_names
        self._check_pool()
        chunks = glob.glob(os.path.join(self.pool_dir, '*.npz'))
        if chunks and not resume:
            # Self-training hands the trainer its crops this way; a user reusing a folder
            # may not expect it.
            LOG.info('%s already holds %d crop chunks: this run starts with them (use a '
                     'new output_dir for a run of its own)', self.pool_dir, len(chunks))
        self._allocator = augment_workers.SharedAllocator(
            multiprocessing.get_context('spawn')) if config.augment_workers else None
        self.pool = CropPool(self.pool_dir, config.pool_size, self.context_spec.input_size,
                             self.color, allocate=self._allocator or np.empty)
        self._augmenter = None
        self._workers = []
        self._stop = None
        self._rendered = None
        self.eval_set = self._load_eval_set()

    # ----- state

    def _check_pool(self):
        """
        Refuse a pool folder holding crops of other data (a reused ``output_dir``).

        The crops' source and crop are recorded beside the chunks when the folder is first
        used; a later run in that folder must have the same.
        """
        path = os.path.join(self.pool_dir, 'pool_key.json')
        key = json.loads(json.dumps({'data': self.config.data, 'crop': self.config.crop,
                                     'context': self.config.context, 'color': self.color}))
        if os.path.isfile(path):
            with open(path, 'r', encoding='utf-8') as stream:
                stored = json.load(stream)
            differing = sorted(name for name in key if stored.get(name) != key[name])
            if differing:
                raise ValueError(f'{self.pool_dir} holds crops of another {", ".join(differing)}'
                                 f' ({stored}): remove it or train in another output_dir')
            return
        with atomic_file(path) as stream:
            stream.write(json.dumps(key, sort_keys=True).encode('utf-8'))

    def _resume(self):
        import torch

        path = os.path.join(self.output_dir, CHECKPOINT_LAST)
        checkpoint = load_checkpoint(path)
        saved = json.loads(checkpoint['config'])
        current = json.loads(json.dumps(self.config.to_dict()))
        differing = [key for key in current if key not in RESUME_MAY_CHANGE
                     and key in saved and saved[key] != current[key]]
        if differing:
            raise ValueError(
                f'cannot resume {path}: the config differs in '
                + '; '.join(f'{key} ({saved[key]!r} in the run, {current[key]!r} now)'
                            for key in differing)
                + f'. A resumed run may only change {", ".join(RESUME_MAY_CHANGE)}')
        self.model.load_state_dict(checkpoint['model'])
        self.optimizer.load_state_dict(checkpoint['optimizer'])
        self.step = int(checkpoint['step'])
        self.best_error_mm = float(checkpoint['best_error_mm'])
        self.start_model = json.loads(checkpoint.get('start_model', 'null'))
        self.rng.bit_generator.state = json.loads(checkpoint['numpy_rng'])
        torch.set_rng_state(checkpoint['torch_rng'])
        # Dropout and Gumbel noise on a GPU draw from the CUDA generator of the device used
        # (older checkpoints hold every visible GPU's; the run used the first).
        cuda_rng = checkpoint.get('cuda_rng')
        if isinstance(cuda_rng, (list, tuple)):
            cuda_rng = cuda_rng[0] if cuda_rng else None
        if cuda_rng is not None and self.device.type == 'cuda':
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self.train_rows = [r for r in read_csv(os.path.join(self.output_dir, 'train.csv'))
                           if r['step'] <= self.step]
        self.eval_rows = [r for r in read_csv(os.path.join(self.output_dir, 'eval.csv'))
                          if r['step'] <= self.step]
        LOG.info('resumed %s at step %d', path, self.step)

    def _initialise_from(self, model):
        from hand_pose_ros.core import model_io
        from hand_pose_ros.core.estimator import resolve_card

        card_path = resolve_card(model)
        start_model, card = model_io.load_model(card_path, device='cpu')
        expected = {'network': self.config.model,
                    'crop': model_io.plain_data(self.config.crop_spec.to_dict())}
        for key, value in expected.items():
            if card[key] != value:
                raise ValueError(f'cannot start from {card_path}: its {key} {card[key]!r} '
                                 f'differs from the config ({value!r})')
        differing = sorted(key for key in set(card['config']) | set(self.model.config)
                           if card['config'].get(key) != self.model.config.get(key))
        state = start_model.state_dict()
        if self.config.init_widen:
            state = self._widened(state, card_path, card['config'], differing)
        elif differing:
            raise ValueError(f'cannot start from {card_path}: its network config differs '
                             f'from model_cfg in {differing}; set init_widen to start a '
                             f'wider network from it')
        self.model.load_state_dict(state)
        training = card.get('training') or {}
        self.start_model = {
            'model': str(model), 'weights_sha256': card['files'][card['weights']]['sha256'],
            'total_steps': int(training.get('total_steps', training.get('steps', 0)))}
        if differing:
            self.start_model['widened_from'] = {key: card['config'][key] for key in differing}
        LOG.info('initialised the network from %s', card_path)

    def _widened(self, state, card_path, narrow_config, differing):
        import torch

        from hand_pose_ros.core.models.widen import widen_state_dict, WIDENABLE

        grown = {'width', 'head_channels'}
        if self.config.model not in WIDENABLE or not set(differing) <= grown:
            raise ValueError(f'init_widen: cannot widen {card_path} into this network: only '
                             f'{sorted(grown)} of {list(WIDENABLE)} may differ, not '
                             f'{sorted(set(differing) - grown) or [self.config.model]}')
        LOG.info('widening %s: %s', card_path, ', '.join(
            f'{key} {narrow_config[key]} -> {self.model.config[key]}' for key in differing))
        generator = torch.Generator().manual_seed(self.config.seed)
        return widen_state_dict(state, self.model.state_dict(), generator=generator)

    def save_checkpoint(self, path):
        """Write the run state to ``path`` atomically."""
        import torch

        state = {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                 'step': self.step, 'best_error_mm': self.best_error_mm,
                 'start_model': json.dumps(self.start_model),
                 'config': json.dumps(self.config.to_dict()),
                 'numpy_rng': json.dumps(self.rng.bit_generator.state),
                 'torch_rng': torch.get_rng_state()}
        if self.device.type == 'cuda':
            state['cuda_rng'] = torch.cuda.get_rng_state(self.device)
        with atomic_file(path) as stream:
            torch.save(state, stream)

    def _load_eval_set(self):
        if not self.config.eval_frames:
            return None
        data = self.config.held_out_data()
        key = json.dumps([data, self.config.crop, self.config.eval_frames, self.color],
                         sort_keys=True)
        path = os.path.join(self.output_dir, 'eval_set.npz')
        if os.path.isfile(path):
            with np.load(path) as stored:
                if str(stored['key']) == key:
                    return {k: stored[k] for k in stored.files if k != 'key'}
        source = make_source(data, self.config.crop_spec, self.config.eval_seed, self.color)
        eval_set = make_eval_set(source, self.config.eval_frames)
        with atomic_file(path) as stream:
            np.savez(stream, key=key, **eval_set)
        return eval_set

    # ----- data

    def _start_rendering(self):
        config = self.config
        spec = self.context_spec.to_dict()
        if config.render_workers == 0:
            missing = config.pool_size - len(glob.glob(os.path.join(self.pool_dir, '*.npz'))) \
                * config.chunk_size
            source = make_source(config.data, self.context_spec,
                                 render_seed(config.seed, self.step, 0), self.color)
            first = next_chunk_index(self.pool_dir, 'main')
            for index in range(first, first + max(0, math.ceil(missing / config.chunk_size))):
                save_chunk(self.pool_dir, f'chunk_main_{index:06d}.npz',
                           render_chunk(source, config.chunk_size))
            self.pool.refresh()
            return
        context = multiprocessing.get_context('spawn')
        self._stop = context.Event()
        self._allowed = context.Value('q', config.min_pool)
        # Kept by the trainer while the workers live: a spawned worker that starts after
        # this method returned (the pool already full from disk) must still find it.
        self._rendered = context.Value('q', 0)
        for worker in range(config.render_workers):
            seed = render_seed(config.seed, self.step, worker)
            process = context.Process(
                target=render_worker, daemon=True,
                args=(config.data, spec, seed, f's{self.step}w{worker}', self.pool_dir,
                      config.chunk_size, self._stop, self._allowed, self._rendered,
                      self.color))
            process.start()
            self._workers.append(process)
        self.pool.refresh()
        while len(self.pool) < config.min_pool:
            if not any(p.is_alive() for p in self._workers):
                raise RuntimeError('all render workers exited before filling the crop pool; '
                                   'see their error output above')
            time.sleep(0.5)
            self.pool.refresh()

    def _stop_rendering(self):
        if self._stop is not None:
            self._stop.set()
        augment_workers.stop_processes(self._workers)
        self._workers = []

    # ----- loop

    def train(self, stop_at=None):
        """
        Run until ``config.steps`` (or ``stop_at``, checkpointing there).

        :param stop_at: optional earlier step to stop at (the schedule still spans
            ``config.steps``, so a resumed run continues exactly).
        :return: the last held-out metrics (or {}).
        """
        import torch

        config = self.config
        stop_at = config.steps if stop_at is None else min(int(stop_at), config.steps)
        first_step = self.step
        metrics = {}
        try:
            self._start_rendering()
            if self._allocator is not None:
                self._augmenter = augment_workers.AugmentWorkers(
                    self.pool.arrays, self._allocator, config, config.augment_workers)
            self._train_mode()
            window_start, window_samples, loss_ema = time.monotonic(), 0, None
            run_start = time.monotonic() - (self.train_rows[-1]['elapsed_s']
                                            if self.train_rows else 0.0)
            loss_sum, loss_count = 0.0, 0
            while self.step < stop_at:
                if self.step % REFRESH_EVERY == 0 and self._workers:
                    self.pool.refresh()
                    self._allowed.value = config.min_pool + int(
                        (self.step - first_step + REFRESH_EVERY) * config.batch_size
                        * config.fresh_ratio)
                inputs, joints, valid = self._next_batch(stop_at)
                lr = learning_rate(self.step, config)
                for group in self.optimizer.param_groups:
                    group['lr'] = lr
                if hasattr(self.model, 'set_step'):
                    self.model.set_step(self.step)
                outputs = run_model(self.model, inputs, self.device)
                losses = self.model.loss(outputs, {
                    'joints': torch.from_numpy(joints).to(self.device),
                    'valid': torch.from_numpy(valid).to(self.device)})
                self.optimizer.zero_grad(set_to_none=True)
                losses['total'].backward()
                self.optimizer.step()
                self.step += 1
                loss = float(losses['total'].detach())
                if not math.isfinite(loss):
                    raise RuntimeError(f'training diverged at step {self.step} (loss {loss}); '
                                       f'lower the learning rate')
                loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
                loss_sum, loss_count = loss_sum + loss, loss_count + 1
                window_samples += config.batch_size
                elapsed = time.monotonic() - window_start
                rate = window_samples / max(elapsed, 1e-9)
                if self.step % config.log_every == 0:
                    self.train_rows.append({
                        'step': self.step, 'loss': loss_sum / loss_count, 'lr': lr,
                        'samples_per_s': rate, 'pool_size': len(self.pool),
                        'elapsed_s': time.monotonic() - run_start})
                    loss_sum, loss_count = 0.0, 0
                    if elapsed > 60:
                        window_start, window_samples = time.monotonic(), 0
                best = f' best {self.best_error_mm:.1f} mm' if self.eval_rows else ''
                self.progress.update(
                    self.step, f'loss {loss_ema:.3f} lr {lr:.2e} {rate:.0f} samples/s '
                    f'pool {len(self.pool)}{best}')
                if self.step % config.checkpoint_every == 0 or self.step == stop_at:
                    metrics = self.checkpoint()
        finally:
            if self._augmenter is not None:
                self._augmenter.close()
                self._augmenter = None
            self._stop_rendering()
        return metrics

    def _next_batch(self, stop_at):
        """Return the augmented batch of this step (see :mod:`augment_workers`)."""
        config = self.config
        if self._augmenter is None:
            return self.pool.batch(self.rng, config.batch_size, config)
        # Request ahead, but not past the next pool refresh, checkpoint or stop.
        sync = min(stop_at, (self.step // REFRESH_EVERY + 1) * REFRESH_EVERY,
                   (self.step // config.checkpoint_every + 1) * config.checkpoint_every)
        while self._augmenter.free and self.step + self._augmenter.pending < sync:
            self._augmenter.request(*augment_workers.draw_batch(
                self.rng, len(self.pool), config.batch_size))
        return self._augmenter.take()

    def _train_mode(self):
        """Put the network in training mode (BatchNorm in inference mode when frozen)."""
        import torch

        self.model.train()
        if self.config.freeze_batchnorm:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def checkpoint(self):
        """Evaluate, write checkpoints, CSV logs and curves; return the held-out metrics."""
        metrics = {}
        if self.eval_set is not None:
            metrics = evaluate(self.model, self.eval_set, self.device)
            self._train_mode()
            self.eval_rows.append({'step': self.step, 'mean_mm': metrics['mean_mm'],
                                   'median_mm': metrics['median_mm']})
            LOG.info('step %d: held-out mean error %.2f mm', self.step, metrics['mean_mm'])
            self.progress.stream.write(
                f'\nstep {self.step}: held-out mean 3D error {metrics["mean_mm"]:.2f} mm '
                f'(median {metrics["median_mm"]:.2f})\n')
        improved = metrics and metrics['mean_mm'] < self.best_error_mm
        if improved:
            self.best_error_mm = metrics['mean_mm']
        # Ctrl-C while the files are written waits for them: a checkpoint cut short raised
        # from inside torch.save, and last and best could disagree.
        # The best first: a kill between the two leaves a last checkpoint whose best error
        # is that of the best file.
        with deferred_interrupts():
            if improved or not metrics:
                self.save_checkpoint(os.path.join(self.output_dir, CHECKPOINT_BEST))
            self.save_checkpoint(os.path.join(self.output_dir, CHECKPOINT_LAST))
            write_csv(os.path.join(self.output_dir, 'train.csv'), TRAIN_FIELDS, self.train_rows)
            write_csv(os.path.join(self.output_dir, 'eval.csv'),
                      ('step', 'mean_mm', 'median_mm'), self.eval_rows)
        plot_curves(self.train_rows, self.eval_rows, os.path.join(self.output_dir, 'curves.png'))
        return metrics


def train(config, resume=False, progress_stream=None):
    """Run a training (see :class:`Trainer`) and return the final held-out metrics."""
    return Trainer(config, resume=resume, progress_stream=progress_stream).train()


def write_model(checkpoint_path, directory, name, export_onnx=True, views=1, refine_passes=1,
                overwrite=False):
    """
    Ship a checkpoint as a model: safetensors + model card (+ ONNX export).

    The card records the network, crop spec, training data and seeds, steps and the
    held-out metrics re-measured on the run's held-out set (when present beside the
    checkpoint).

    :param checkpoint_path: a ``checkpoint_*.pt`` of a run.
    :param directory: output folder (e.g. ``models``).
    :param name: model name (file stem).
    :param export_onnx: also export ``name.onnx`` and record it in the card.
    :param views: test-time views the estimator uses by default (card ``inference.views``;
        see :class:`~hand_pose_ros.core.estimator.HandPoseEstimator`).
    :param refine_passes: re-centring passes the estimator makes by default (card
        ``inference.refine_passes``).
    :param overwrite: replace a card of that name in ``directory``; without it an existing
        card (the shipped ``models/default.yaml``, say) is refused.
    :return: path of the model card.
    """
    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.crop import check_views

    existing = os.path.join(directory, f'{name}{model_io.CARD_SUFFIX}')
    if os.path.exists(existing) and not overwrite:
        raise ValueError(f'model card {existing} exists: pass overwrite (--overwrite) to '
                         f'replace it, or choose another --model-dir or --name')
    check_views(views)
    if int(refine_passes) != refine_passes or refine_passes < 0:
        raise ValueError(f'refine_passes must be an integer >= 0, got {refine_passes!r}')
    model, config, checkpoint = model_from_checkpoint(checkpoint_path)
    start_model = json.loads(checkpoint.get('start_model', 'null'))
    extra = {
        'crop': config.crop_spec.to_dict(),
        'training': {
            'data': config.data, 'seed': config.seed, 'steps': int(checkpoint['step']),
            'batch_size': config.batch_size, 'lr': config.lr, 'lr_schedule': config.lr_schedule,
            'augment': {k: list(v) if isinstance(v, tuple) else v
                        for k, v in vars(config.augment_config).items()},
            'context': config.context, 'checkpoint': os.path.basename(checkpoint_path),
            'start_model': start_model,
            'total_steps': int(checkpoint['step']) + (start_model or {}).get('total_steps', 0)},
        'inference': {'views': views, 'refine_passes': int(refine_passes)},
    }
    eval_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), 'eval_set.npz')
    if os.path.isfile(eval_path):
        with np.load(eval_path) as stored:
            eval_set = {k: stored[k] for k in stored.files if k != 'key'}
        metrics = evaluate(model, eval_set, 'cpu')
        extra['metrics'] = {
            'held_out': {'data': config.held_out_data(), 'frames': len(eval_set['mask']),
                         'center': 'oracle',
                         # It chose the checkpoint, so it flatters the model a little.
                         'role': 'validation: chose the checkpoint; test figures come '
                                 'from hand_pose_evaluate'},
            'mean_3d_error_mm': round(metrics['mean_mm'], 3),
            'median_3d_error_mm': round(metrics['median_mm'], 3),
            'per_joint_error_mm': [round(v, 3) for v in metrics['per_joint_mm']]}
    card_path = model_io.save_model(model, directory, name, extra=extra)
    if export_onnx:
        export.export_card(card_path)
    return card_path


def benchmark(config, crops=32, steps=5):
    """
    Measure the data and training throughput of a config on this machine.

    :param config: :class:`TrainConfig`.
    :param crops: context crops to render for the render figure.
    :param steps: training steps to time (after one warm-up step).
    :return: dict with 'render_crops_per_s' (one process), 'augment_ms_per_batch',
        'train_step_ms', 'train_samples_per_s' and 'device'.
    """
    import torch

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    spec = augment.context_spec(config.crop_spec, config.context)
    device = resolve_device(config.device)
    model = build_training_model(config).to(device)
    color = 'color' in model.input_names
    source = make_source(config.data, spec, config.seed, color)
    source.next_crop()
    start = time.perf_counter()
    chunk = render_chunk(source, crops)
    render_s = time.perf_counter() - start
    pool = CropPool(os.devnull, crops, spec.input_size, color)
    pool.add(chunk['patches'], chunk['joints'], chunk['mask'], chunk.get('colors'))
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    batches = [pool.batch(rng, config.batch_size, config) for _ in range(steps + 1)]
    augment_s = (time.perf_counter() - start) / len(batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for index, (inputs, joints, valid) in enumerate(batches):
        if index == 1:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
        outputs = run_model(model, inputs, device)
        loss = model.loss(outputs, {'joints': torch.from_numpy(joints).to(device),
                                    'valid': torch.from_numpy(valid).to(device)})['total']
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    return {'render_crops_per_s': crops / render_s, 'augment_ms_per_batch': augment_s * 1e3,
            'train_step_ms': step_s * 1e3, 'train_samples_per_s': config.batch_size / step_s,
            'device': str(device)}
