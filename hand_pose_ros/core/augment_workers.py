"""
Augmented training batches, made in the trainer's process or ahead of it in workers.

Every batch is a pure function of the crop pool, the batch's crop indices and its
augmentation seed (:func:`augment_batch`). The trainer draws indices and seed from its own
generator (:func:`draw_batch`) with or without workers, so a run gives the same batches
with any number of workers (a test checks it).

On a GPU one training step of the default network takes less time than augmenting its
batch in one process (about 0.5-1.7 ms per crop), so the GPU would wait for the CPU.
:class:`AugmentWorkers` keeps the crop pool in shared memory (:class:`SharedAllocator`)
and builds requested batches in worker processes into shared output slots, handed back in
request order. The trainer requests no batch past its next pool refresh or checkpoint, so
no worker reads a crop while the pool overwrites it, and a checkpoint's generator state is
that of the steps it trained.
"""

from collections import deque
import os
import queue
import signal
import time
import traceback

import numpy as np

from hand_pose_ros.core import augment
from hand_pose_ros.core.skeleton import NUM_JOINTS

# Seconds a worker waits for a request before checking that its trainer still lives.
_POLL_S = 1.0
# Workers told to stop and still alive this long after (all together) are terminated: the
# work they had in flight is lost (chunk files are written atomically, batches are dropped).
STOP_TIMEOUT_S = 15.0


def draw_batch(rng, pool_count, batch_size):
    """
    Draw one batch's crop indices and augmentation seed.

    :param rng: the trainer's ``numpy.random.Generator``.
    :param pool_count: crops in the pool.
    :param batch_size: crops per batch.
    :return: ((batch_size,) int64 indices, int seed).
    """
    indices = rng.integers(0, pool_count, batch_size)
    return indices, int(rng.integers(0, 2**63 - 1))


def batch_shapes(batch_size, size, color):
    """Return {name: (shape, dtype)} of one batch's arrays (see :func:`augment_batch`)."""
    shapes = {'depth': ((batch_size, 1, size, size), np.float32),
              'joints': ((batch_size, NUM_JOINTS, 3), np.float32),
              'valid': ((batch_size, NUM_JOINTS), np.float32)}
    if color:
        shapes['color'] = ((batch_size, 3, size, size), np.float32)
    return shapes


def augment_batch(crops, indices, seed, config, out):
    """
    Fill ``out`` with the augmented crops ``indices`` of a pool.

    :param crops: the pool's arrays: 'patches' (N, P, P) float16 context crops, 'joints'
        (N, 21, 3) joints normalised in them, 'masks' (N, 21) bool, and 'colors'
        (N, P, P, 3) uint8 for a colour pool.
    :param indices: (B,) crop indices.
    :param seed: the batch's augmentation seed.
    :param config: the run's ``TrainConfig`` (crop spec, augmentation, context).
    :param out: arrays of :func:`batch_shapes`: 'depth' (B, 1, S, S), 'joints' (B, 21, 3)
        normalised in the output crop (0 where not valid), 'valid' (B, 21) 0/1, and
        'color' (B, 3, S, S) for a colour pool.
    """
    rng = np.random.default_rng(seed)
    colors = crops.get('colors')
    for i, index in enumerate(indices):
        patch, joints_norm, color = augment.augment_crop(
            crops['patches'][index].astype(np.float32), crops['joints'][index], rng,
            config.augment_config, config.crop_spec, config.context,
            None if colors is None else colors[index])
        out['depth'][i, 0] = patch
        if color is not None:
            out['color'][i] = color
        mask = crops['masks'][index] & np.all(np.isfinite(joints_norm), axis=-1)
        out['joints'][i] = np.where(mask[:, None], joints_norm, 0.0)
        out['valid'][i] = mask


def split_batch(out):
    """Return (inputs, joints, valid) of :func:`augment_batch`'s arrays, as models take them."""
    return ({name: out[name] for name in ('depth', 'color') if name in out}, out['joints'],
            out['valid'])


class SharedAllocator:
    """
    Allocates numpy arrays in shared memory that spawned processes can map.

    :param context: the ``multiprocessing`` context the processes are started with.
    """

    def __init__(self, context):
        self.context = context
        self._handles = {}

    def __call__(self, shape, dtype):
        """Return a new shared array of ``shape`` and ``dtype`` (contents undefined)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        raw = self.context.RawArray('b', max(1, count * dtype.itemsize))
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        self._handles[id(array)] = (raw, tuple(shape), dtype.str)
        return array

    def handle(self, array):
        """Return what a spawned process needs to map ``array`` (see :func:`mapped`)."""
        return self._handles[id(array)]


def mapped(handle):
    """Return the numpy view of a :meth:`SharedAllocator.handle` in this process."""
    raw, shape, dtype = handle
    return np.frombuffer(raw, dtype=np.dtype(dtype), count=int(np.prod(shape))).reshape(shape)


def ignore_interrupts():
    """
    Let Ctrl-C reach only the trainer (call first in a worker process).

    Ctrl-C interrupts the terminal's whole process group; the trainer then stops its
    workers itself, so they would only print tracebacks.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_processes(processes, timeout_s=STOP_TIMEOUT_S):
    """Wait for worker processes told to stop; terminate those still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=_POLL_S)


def _augment_worker(crop_handles, slot_handles, config_dict, requests, done):
    """Build requested batches into their slots until told to stop (process target)."""
    from hand_pose_ros.core.training import TrainConfig

    ignore_interrupts()
    config = TrainConfig.from_dict(config_dict)
    crops = {name: mapped(handle) for name, handle in crop_handles.items()}
    slots = [{name: mapped(handle) for name, handle in slot.items()} for slot in slot_handles]
    parent = os.getppid()
    while os.getppid() == parent:
        try:
            request = requests.get(timeout=_POLL_S)
        except queue.Empty:
            continue
        if request is None:
            return
        slot, indices, seed = request
        try:
            augment_batch(crops, indices, seed, config, slots[slot])
        except Exception:  # noqa: B902 - the trainer re-raises it with the traceback
            done.put((slot, traceback.format_exc()))
            return
        done.put((slot, None))


class AugmentWorkers:
    """
    Worker processes that build augmented batches ahead of the trainer.

    :param crops: the pool's arrays (see :func:`augment_batch`), allocated by ``allocator``.
    :param allocator: the :class:`SharedAllocator` of the pool's arrays.
    :param config: the run's ``TrainConfig``.
    :param workers: processes (>= 1).
    :param slots: output batches in flight or held (default: two per worker, plus one).
    """

    def __init__(self, crops, allocator, config, workers, slots=None):
        if workers < 1:
            raise ValueError(f'augment workers must be >= 1, got {workers}')
        context = allocator.context
        shapes = batch_shapes(config.batch_size, config.crop_spec.input_size,
                              'colors' in crops)
        self._slots = [{name: allocator(shape, dtype) for name, (shape, dtype) in shapes.items()}
                       for _ in range(slots or 2 * workers + 1)]
        self._requests = context.Queue()
        self._done = context.Queue()
        crop_handles = {name: allocator.handle(array) for name, array in crops.items()}
        slot_handles = [{name: allocator.handle(array) for name, array in slot.items()}
                        for slot in self._slots]
        self._processes = []
        for _ in range(workers):
            process = context.Process(
                target=_augment_worker, daemon=True,
                args=(crop_handles, slot_handles, config.to_dict(), self._requests,
                      self._done))
            process.start()
            self._processes.append(process)
        self._free = deque(range(len(self._slots)))
        self._pending = deque()
        self._finished = set()
        self._held = None

    @property
    def free(self):
        """Return how many more batches may be requested now."""
        return len(self._free)

    @property
    def pending(self):
        """Return how many requested batches have not been taken yet."""
        return len(self._pending)

    def request(self, indices, seed):
        """Ask for the batch of crops ``indices`` augmented with ``seed`` (needs ``free``)."""
        slot = self._free.popleft()
        self._pending.append(slot)
        self._requests.put((slot, np.asarray(indices, dtype=np.int64), int(seed)))

    def take(self):
        """
        Return the oldest requested batch: (inputs, joints, valid) as :meth:`CropPool.batch`.

        The arrays are shared: they stay valid until the next ``take``.
        """
        if self._held is not None:
            self._free.append(self._held)
            self._held = None
        if not self._pending:
            raise RuntimeError('no augmented batch was requested')
        slot = self._pending.popleft()
        while slot not in self._finished:
            try:
                finished, error = self._done.get(timeout=_POLL_S)
            except queue.Empty:
                if not all(p.is_alive() for p in self._processes):
                    raise RuntimeError('an augmentation worker exited; see its error output '
                                       'above') from None
                continue
            if error is not None:
                raise RuntimeError(f'an augmentation worker failed:\n{error}')
            self._finished.add(finished)
        self._finished.remove(slot)
        self._held = slot
        return split_batch(self._slots[slot])

    def close(self):
        """Stop the workers (requests not taken are dropped)."""
        for _ in self._processes:
            self._requests.put(None)
        stop_processes(self._processes)
        self._processes = []
        self._requests.close()
        self._done.close()
