"""A tiny training run learns, logs, checkpoints and resumes exactly."""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

from hand_pose_ros.core import skeleton, training
from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz

torch.set_num_threads(1)

TINY_MODEL = {'backbone': 'resnet18', 'width': 0.125, 'head_channels': 8}


def write_hands2017_fixture(root, frames=6, seed=0):
    """Write a tiny HANDS2017-format dataset: disks of each joint's depth on a back plane."""
    rng = np.random.default_rng(seed)
    cam = CameraIntrinsics.from_preset('hands2017')
    os.makedirs(os.path.join(root, 'images'), exist_ok=True)
    rows, cols = np.mgrid[0:cam.height, 0:cam.width]
    lines = []
    for frame in range(frames):
        center = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05), 0.5])
        joints = center + rng.uniform(-0.07, 0.07, (21, 3)) * [1.0, 1.0, 0.4]
        depth = np.zeros((cam.height, cam.width), dtype=np.uint16)
        depth[150:330, 200:440] = 600
        for u, v, d in uvd_from_xyz(joints, cam)[np.argsort(-joints[:, 2])]:
            depth[(rows - v) ** 2 + (cols - u) ** 2 <= 25] = int(d * 1000)
        name = f'image_D{frame:08d}.png'
        Image.fromarray(depth).save(os.path.join(root, 'images', name))
        order = np.argsort(skeleton.LAYOUTS['hands2017'].to_canonical)
        values = (joints[order] * 1000).ravel()
        lines.append(name + ' ' + ' '.join(f'{v:.3f}' for v in values))
    with open(os.path.join(root, 'Training_Annotation.txt'), 'w') as stream:
        stream.write('\n'.join(lines) + '\n')


def tiny_config(tmp_path, output='run', **overrides):
    data_root = str(tmp_path / 'data')
    if not os.path.isdir(data_root):
        write_hands2017_fixture(data_root)
    values = {
        'output_dir': str(tmp_path / output), 'model_cfg': TINY_MODEL,
        'crop': {'input_size': 32, 'cube_size_m': [0.2, 0.2, 0.3]},
        'augment': {'rotation_deg': 20.0, 'scale_range': [1.0, 1.0], 'shift_px': 0.0,
                    'depth_shift_m': 0.0, 'noise_mm': 0.0, 'erase_prob': 0.0,
                    'hole_prob': 0.0, 'edge_dropout_prob': 0.0},
        'data': {'type': 'hands2017', 'root': data_root},
        'eval_data': {'type': 'hands2017', 'root': data_root},
        'eval_frames': 4, 'pool_size': 12, 'min_pool': 4, 'chunk_size': 6,
        'render_workers': 0, 'steps': 40, 'batch_size': 8, 'lr': 1e-2, 'warmup_steps': 2,
        'checkpoint_every': 20, 'log_every': 2, 'seed': 3, 'num_threads': 1}
    values.update(overrides)
    return training.TrainConfig.from_dict(values)


def test_tiny_run_learns_and_writes_its_outputs(tmp_path):
    config = tiny_config(tmp_path)
    progress = io.StringIO()
    metrics = training.train(config, progress_stream=progress)
    out = tmp_path / 'run'
    for name in ('checkpoint_last.pt', 'checkpoint_best.pt', 'train.csv', 'eval.csv',
                 'curves.png', 'eval_set.npz'):
        assert (out / name).is_file(), name
    rows = training.read_csv(str(out / 'train.csv'))
    assert [r['step'] for r in rows] == list(range(2, 41, 2))
    losses = [r['loss'] for r in rows]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    evals = training.read_csv(str(out / 'eval.csv'))
    assert [r['step'] for r in evals] == [20, 40]
    assert metrics['mean_mm'] == pytest.approx(evals[-1]['mean_mm'], rel=1e-5)
    assert 0 < metrics['mean_mm'] < 200 and len(metrics['per_joint_mm']) == 21
    assert 'loss' in progress.getvalue() and '40/40' in progress.getvalue()
    with Image.open(out / 'curves.png') as image:
        assert image.size == (900, 620)
        # Both panels hold a drawn curve (coloured pixels).
        pixels = np.asarray(image.convert('RGB')).astype(int)
        assert (np.abs(pixels - [31, 119, 180]).sum(-1) < 10).sum() > 50
        assert (np.abs(pixels - [214, 39, 40]).sum(-1) < 10).sum() > 5
    checkpoint = training.load_checkpoint(str(out / 'checkpoint_last.pt'))
    assert checkpoint['step'] == 40


def test_resume_continues_to_the_same_weights(tmp_path):
    straight = training.Trainer(tiny_config(tmp_path, 'straight', eval_frames=0))
    straight.train()
    interrupted = training.Trainer(tiny_config(tmp_path, 'resumed', eval_frames=0))
    interrupted.train(stop_at=14)
    assert training.load_checkpoint(str(tmp_path / 'resumed' / 'checkpoint_last.pt'))[
        'step'] == 14
    resumed = training.Trainer(tiny_config(tmp_path, 'resumed', eval_frames=0), resume=True)
    assert resumed.step == 14
    resumed.train()
    assert resumed.step == 40
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    rows = training.read_csv(str(tmp_path / 'resumed' / 'train.csv'))
    assert [r['step'] for r in rows] == list(range(2, 41, 2))


def test_augment_workers_give_the_same_run_and_resume(tmp_path):
    # The same batches with or without workers, so the same weights; stopping at a step that
    # is no refresh or checkpoint boundary (14) and resuming changes nothing either.
    serial = training.Trainer(tiny_config(tmp_path, 'serial', eval_frames=0, steps=30))
    serial.train()
    workers = training.Trainer(tiny_config(tmp_path, 'workers', eval_frames=0, steps=30,
                                           augment_workers=2))
    workers.train(stop_at=14)
    import multiprocessing
    assert not multiprocessing.active_children()
    workers = training.Trainer(tiny_config(tmp_path, 'workers', eval_frames=0, steps=30,
                                           augment_workers=2), resume=True)
    workers.train()
    assert workers.step == 30
    for key, value in serial.model.state_dict().items():
        torch.testing.assert_close(workers.model.state_dict()[key], value, msg=key,
                                   rtol=0, atol=0)


def test_augment_workers_return_batches_in_request_order_and_report_failures(tmp_path):
    from hand_pose_ros.core import augment_workers
    import multiprocessing
    config = tiny_config(tmp_path, chunk_size=6)
    allocator = augment_workers.SharedAllocator(multiprocessing.get_context('spawn'))
    pool = training.CropPool(str(tmp_path), 6, 48, allocate=allocator)
    rng = np.random.default_rng(0)
    pool.add(rng.uniform(-1, 1, (6, 48, 48)).astype(np.float16),
             rng.uniform(-0.5, 0.5, (6, 21, 3)), np.ones((6, 21), bool))
    workers = augment_workers.AugmentWorkers(pool.arrays, allocator, config, 2, slots=3)
    try:
        requests = [augment_workers.draw_batch(rng, len(pool), config.batch_size)
                    for _ in range(6)]
        # Three slots for six batches: slots are reused once taken batches are released.
        issued, taken = 0, []
        while len(taken) < len(requests):
            while workers.free and issued < len(requests):
                workers.request(*requests[issued])
                issued += 1
            inputs, joints, valid = workers.take()
            taken.append((inputs['depth'].copy(), joints.copy(), valid.copy()))
        for (indices, seed), (depth, joints, valid) in zip(requests, taken):
            out = {name: np.empty(shape, dtype) for name, (shape, dtype) in
                   augment_workers.batch_shapes(config.batch_size, 32, False).items()}
            augment_workers.augment_batch(pool.arrays, indices, seed, config, out)
            np.testing.assert_array_equal(depth, out['depth'])
            np.testing.assert_array_equal(joints, out['joints'])
            np.testing.assert_array_equal(valid, out['valid'])
        # A crop index outside the pool fails in the worker: the trainer gets its traceback.
        workers.request(np.array([100]), 0)
        with pytest.raises(RuntimeError, match='(?s)augmentation worker failed.*IndexError'):
            workers.take()
    finally:
        workers.close()
    assert not multiprocessing.active_children()


def test_workers_that_do_not_stop_in_time_are_terminated():
    from hand_pose_ros.core import augment_workers
    import multiprocessing
    import time
    context = multiprocessing.get_context('spawn')
    stuck = context.Process(target=time.sleep, args=(60,), daemon=True)
    quick = context.Process(target=time.sleep, args=(0,), daemon=True)
    stuck.start()
    quick.start()
    augment_workers.stop_processes([stuck, quick], timeout_s=2.0)
    assert not stuck.is_alive() and stuck.exitcode == -15  # terminated
    assert not quick.is_alive() and quick.exitcode == 0  # stopped by itself


def test_resume_refuses_a_different_network(tmp_path):
    training.Trainer(tiny_config(tmp_path, eval_frames=0)).train(stop_at=2)
    other = tiny_config(tmp_path, eval_frames=0, model_cfg=dict(TINY_MODEL, head_channels=16))
    with pytest.raises(ValueError, match='model_cfg'):
        training.Trainer(other, resume=True)


def test_resume_refuses_other_training_settings_and_takes_more_steps(tmp_path):
    training.Trainer(tiny_config(tmp_path, eval_frames=0)).train(stop_at=2)
    for change in ({'lr': 5e-3}, {'seed': 4}, {'batch_size': 4}, {'lr_schedule': 'constant'}):
        with pytest.raises(ValueError, match=f'config differs in {next(iter(change))}'):
            training.Trainer(tiny_config(tmp_path, eval_frames=0, **change), resume=True)
    longer = training.Trainer(tiny_config(tmp_path, eval_frames=0, steps=60,
                                          checkpoint_every=10), resume=True)
    assert longer.step == 2 and longer.config.steps == 60


def test_resume_takes_the_start_model_spelled_another_way(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, 'first', steps=4, checkpoint_every=4)
    training.train(config, progress_stream=io.StringIO())
    training.write_model(str(tmp_path / 'first' / 'checkpoint_best.pt'),
                         str(tmp_path / 'models'), 'start', export_onnx=False)
    monkeypatch.chdir(tmp_path)
    relative = tiny_config(tmp_path, eval_frames=0, init_from='models/start.yaml')
    training.Trainer(relative).train(stop_at=2)
    absolute = tiny_config(tmp_path, eval_frames=0, init_from=str(tmp_path / 'models' /
                                                                  'start.yaml'))
    assert training.Trainer(absolute, resume=True).step == 2
    # Ignored on resume (the checkpoint holds the weights), whatever it names.
    assert training.Trainer(tiny_config(tmp_path, eval_frames=0, init_from='default'),
                            resume=True).step == 2


def test_render_workers_started_on_a_full_pool_render(tmp_path):
    # A resumed run's pool is full from disk, so starting the workers returns at once; the
    # workers, still starting, must find what they share with the trainer.
    import glob
    import time

    config = tiny_config(tmp_path, eval_frames=0, render_workers=1)
    trainer = training.Trainer(config)
    trainer.train(stop_at=2)
    trainer = training.Trainer(config, resume=True)
    try:
        trainer._start_rendering()
        assert len(trainer.pool) >= config.min_pool
        deadline = time.monotonic() + 90
        while not glob.glob(str(tmp_path / 'run' / 'pool' / 'chunk_s2w0_*.npz')):
            assert trainer._workers[0].is_alive(), 'the render worker died'
            assert time.monotonic() < deadline, 'the render worker rendered nothing'
            time.sleep(0.2)
    finally:
        trainer._stop_rendering()


def test_write_model_ships_card_weights_and_onnx(tmp_path):
    config = tiny_config(tmp_path, steps=4, checkpoint_every=4)
    training.train(config, progress_stream=io.StringIO())
    from hand_pose_ros.core import model_io
    card_path = training.write_model(str(tmp_path / 'run' / 'checkpoint_best.pt'),
                                     str(tmp_path / 'models'), 'tiny', views=4, refine_passes=2)
    card = model_io.read_card(card_path)
    assert card['network'] == 'a2j' and card['crop']['input_size'] == 32
    assert card['inference'] == {'views': 4, 'refine_passes': 2}
    assert card['training']['steps'] == 4 and card['training']['seed'] == 3
    assert card['metrics']['mean_3d_error_mm'] > 0
    assert set(card['files']) == {'tiny.safetensors', 'tiny.onnx'}
    model, _ = model_io.load_model(card_path)
    trained, _, _ = training.model_from_checkpoint(str(tmp_path / 'run' / 'checkpoint_best.pt'))
    batch = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(batch)['joints'], trained(batch)['joints'])
    # A card of that name is not replaced unless asked (the CLI's defaults name the shipped
    # models/default.yaml).
    before = Path(card_path).read_bytes()
    with pytest.raises(ValueError, match='tiny.yaml exists: pass overwrite'):
        training.write_model(str(tmp_path / 'run' / 'checkpoint_best.pt'),
                             str(tmp_path / 'models'), 'tiny', export_onnx=False)
    assert Path(card_path).read_bytes() == before
    training.write_model(str(tmp_path / 'run' / 'checkpoint_best.pt'), str(tmp_path / 'models'),
                         'tiny', export_onnx=False, overwrite=True)
    assert set(model_io.read_card(card_path)['files']) == {'tiny.safetensors'}


def test_init_from_a_model_starts_from_its_weights(tmp_path):
    from hand_pose_ros.core import model_io
    training.train(tiny_config(tmp_path, steps=4, checkpoint_every=4, eval_frames=0),
                   progress_stream=io.StringIO())
    card_path = training.write_model(str(tmp_path / 'run' / 'checkpoint_last.pt'),
                                     str(tmp_path / 'models'), 'start', export_onnx=False)
    started = training.Trainer(tiny_config(tmp_path, 'tuned', eval_frames=0,
                                           init_from=str(card_path)))
    start_model, _ = model_io.load_model(card_path)
    for key, value in start_model.state_dict().items():
        torch.testing.assert_close(started.model.state_dict()[key], value, msg=key)
    started.train(stop_at=2)
    tuned = training.write_model(str(tmp_path / 'tuned' / 'checkpoint_last.pt'),
                                 str(tmp_path / 'models'), 'tuned', export_onnx=False)
    training_info = model_io.read_card(tuned)['training']
    assert training_info['start_model']['model'] == str(card_path)
    assert training_info['start_model']['total_steps'] == 4
    assert (training_info['steps'], training_info['total_steps']) == (2, 6)


def test_frozen_batchnorm_keeps_the_running_statistics(tmp_path):
    def statistics(model):
        return {name: value.clone() for name, value in model.state_dict().items()
                if name.endswith(('running_mean', 'running_var'))}

    for freeze in (True, False):
        trainer = training.Trainer(tiny_config(tmp_path, f'freeze_{freeze}', steps=6,
                                               checkpoint_every=3, freeze_batchnorm=freeze),
                                   progress_stream=io.StringIO())
        before = statistics(trainer.model)
        weights = trainer.model.weight_head.out.weight.detach().clone()
        trainer.train()  # evaluates at step 3, which must not unfreeze them
        after = statistics(trainer.model)
        same = all(torch.equal(before[name], after[name]) for name in before)
        assert same == freeze and before
        assert not torch.equal(weights, trainer.model.weight_head.out.weight)


def test_init_from_refuses_a_different_network_or_crop(tmp_path):
    training.train(tiny_config(tmp_path, steps=2, checkpoint_every=2, eval_frames=0),
                   progress_stream=io.StringIO())
    card_path = str(training.write_model(str(tmp_path / 'run' / 'checkpoint_last.pt'),
                                         str(tmp_path / 'models'), 'start', export_onnx=False))
    wider = tiny_config(tmp_path, 'wide', eval_frames=0, init_from=card_path,
                        model_cfg=dict(TINY_MODEL, head_channels=16))
    with pytest.raises(ValueError, match=r"model_cfg in \['head_channels'\]; set init_widen"):
        training.Trainer(wider)
    other_crop = tiny_config(tmp_path, 'crop', eval_frames=0, init_from=card_path,
                             crop={'input_size': 32, 'cube_size_m': [0.3, 0.3, 0.3]})
    with pytest.raises(ValueError, match='crop'):
        training.Trainer(other_crop)


def test_init_widen_starts_a_wider_network_computing_the_same_joints(tmp_path):
    from hand_pose_ros.core import model_io
    training.train(tiny_config(tmp_path, steps=4, checkpoint_every=4, eval_frames=0),
                   progress_stream=io.StringIO())
    card_path = str(training.write_model(str(tmp_path / 'run' / 'checkpoint_last.pt'),
                                         str(tmp_path / 'models'), 'start', export_onnx=False))
    wide_cfg = dict(TINY_MODEL, width=0.25, head_channels=16)
    wide = training.Trainer(tiny_config(tmp_path, 'wide', eval_frames=0, init_from=card_path,
                                        init_widen=True, model_cfg=wide_cfg))
    narrow, _ = model_io.load_model(card_path)
    wide.model.eval()
    batch = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected, widened = narrow(batch), wide.model(batch)
    assert sum(p.numel() for p in wide.model.parameters()) > 2 * sum(
        p.numel() for p in narrow.parameters())
    torch.testing.assert_close(widened['joints'], expected['joints'], atol=1e-5, rtol=1e-4)
    wide.train(stop_at=2)
    widened = training.write_model(str(tmp_path / 'wide' / 'checkpoint_last.pt'),
                                   str(tmp_path / 'models'), 'wide', export_onnx=False)
    assert model_io.read_card(widened)['training']['start_model']['widened_from'] == {
        'width': 0.125, 'head_channels': 8}
    with pytest.raises(ValueError, match='init_widen: cannot widen'):
        training.Trainer(tiny_config(tmp_path, 'deeper', eval_frames=0, init_from=card_path,
                                     init_widen=True,
                                     model_cfg=dict(TINY_MODEL, backbone='resnet34')))


@pytest.mark.parametrize('overrides, message', [
    ({'lr_schedule': 'warm'}, 'lr_schedule must be one of'),
    ({'steps': 0}, 'steps must be a positive integer'),
    ({'augment_workers': -1}, 'augment_workers must be >= 0'),
    ({'min_pool': 100}, 'exceeds pool_size'),
    ({'crop': {'input_size': 1}}, 'input_size must be an integer'),
    ({'colour': 'red'}, 'unknown training config keys'),
    ({'augment': {'noise_mm': -1}}, 'noise_mm must be finite'),
    ({'data': {'type': 'synthetic', 'seed': 7}}, 'data takes no seed'),
])
def test_config_validation(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **overrides)


def test_a_pool_of_other_data_is_refused(tmp_path):
    training.Trainer(tiny_config(tmp_path, eval_frames=0))
    training.Trainer(tiny_config(tmp_path, eval_frames=0))  # the same data: reused
    with pytest.raises(ValueError, match='holds crops of another crop, data'):
        training.Trainer(tiny_config(tmp_path, eval_frames=0, crop={
            'input_size': 48, 'cube_size_m': [0.2, 0.2, 0.3]}, data={
            'type': 'hands2017', 'root': str(tmp_path / 'data'), 'subjects': 'S1'}))


def test_recorded_training_data_needs_a_held_out_split_of_its_own(tmp_path):
    # A dataset reader ignores the seed: without eval_data the held-out frames would be the
    # training frames.
    config = tiny_config(tmp_path, eval_data=None)
    with pytest.raises(ValueError, match='needs eval_data, a held-out split of its own'):
        training.Trainer(config)
    training.Trainer(tiny_config(tmp_path, 'no_eval', eval_data=None, eval_frames=0))


def test_learning_rate_schedules(tmp_path):
    cosine = tiny_config(tmp_path, steps=100, warmup_steps=10, lr=1.0)
    assert training.learning_rate(0, cosine) == pytest.approx(0.1)
    assert training.learning_rate(10, cosine) == pytest.approx(1.0)
    assert training.learning_rate(55, cosine) == pytest.approx(0.5)
    assert training.learning_rate(100, cosine) == pytest.approx(0.0)
    step = tiny_config(tmp_path, lr_schedule='step', lr_step_size=30, lr_gamma=0.1,
                       warmup_steps=0, lr=1.0)
    assert [training.learning_rate(s, step) for s in (0, 29, 30, 61)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.01])


# Rendered in the training process too, with the training seed equal to the held-out one.
@pytest.mark.parametrize('render_workers, seed', [(1, 3), (0, 1000)])
def test_synthetic_source_with_a_render_worker(tmp_path, render_workers, seed):
    config = tiny_config(
        tmp_path, data={'type': 'synthetic', 'camera': 'sr300',
                        'scene': {'distance_range_m': [0.3, 0.6]}},
        eval_data=None, eval_frames=3, eval_seed=1000, render_workers=render_workers,
        seed=seed, chunk_size=4, pool_size=8, min_pool=4, steps=3, checkpoint_every=3)
    trainer = training.Trainer(config, progress_stream=io.StringIO())
    metrics = trainer.train()
    assert not trainer._workers
    import multiprocessing
    assert not multiprocessing.active_children()
    assert 0 < metrics['mean_mm'] < 500
    chunks = sorted((tmp_path / 'run' / 'pool').glob('chunk_*.npz'))
    assert chunks
    with np.load(chunks[0]) as chunk:
        patches, joints = chunk['patches'], chunk['joints']
    # Context crops (1.5 x 32 px) with normalised joints near the crop centre.
    assert patches.shape == (4, 48, 48)
    assert np.all(np.abs(np.nanmean(joints, axis=1)[:, :2]) < 0.5)
    assert (patches < 1).mean() > 0.02
    with np.load(tmp_path / 'run' / 'eval_set.npz') as held_out:
        held_out_patches = held_out['patches'][:, 0]
    # The held-out set is rendered from its own seed: its crops differ from the pool's.
    for patch in held_out_patches:
        assert not any(np.array_equal(patch[8:24, 8:24], p[16:32, 16:32]) for p in patches)
    # Even with the training seed equal to the held-out seed: the scene stream that seed
    # gives the generator is not the one the pool was rendered from.
    direct = training.render_chunk(training.make_source(config.data, trainer.context_spec,
                                                        seed), 4)
    assert not np.array_equal(direct['patches'], patches)


def test_colour_model_trains_on_registered_colour_crops(tmp_path):
    config = tiny_config(
        tmp_path, model='joint_groups_rgb', model_cfg={'width': 0.125, 'num_groups': 2},
        data={'type': 'synthetic', 'camera': 'sr300',
              'scene': {'distance_range_m': [0.3, 0.6]}},
        eval_data=None, eval_frames=3, eval_seed=1000, render_workers=0, chunk_size=4,
        pool_size=8, min_pool=4, steps=3, checkpoint_every=3)
    metrics = training.Trainer(config, progress_stream=io.StringIO()).train()
    assert 0 < metrics['mean_mm'] < 500
    chunks = sorted((tmp_path / 'run' / 'pool').glob('chunk_*.npz'))
    with np.load(chunks[0]) as chunk:
        patches, colors = chunk['patches'], chunk['colors']
    assert colors.shape == (4, 48, 48, 3) and colors.dtype == np.uint8
    # The colour crop shows the depth crop's window: the hand and whatever is behind it are
    # lit surfaces, pixels outside the image are black.
    assert colors[patches < 1].max(axis=-1).min() > 0
    with np.load(tmp_path / 'run' / 'eval_set.npz') as held_out:
        held_out_colors = held_out['colors']
    assert held_out_colors.shape == (3, 3, 32, 32)
    assert 0 <= held_out_colors.min() and held_out_colors.max() <= 1
    from hand_pose_ros.core import model_io
    card_path = training.write_model(str(tmp_path / 'run' / 'checkpoint_best.pt'),
                                     str(tmp_path / 'models'), 'rgb')
    card = model_io.read_card(card_path)
    assert set(card['inputs']) == {'color', 'depth'}
    assert card['metrics']['mean_3d_error_mm'] == pytest.approx(metrics['mean_mm'], rel=1e-4)
    assert set(card['files']) == {'rgb.safetensors', 'rgb.onnx'}


def test_colour_crops_need_the_synthetic_engine_and_a_colour_pool(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ValueError, match='colour'):
        training.make_source(config.data, config.crop_spec, 0, color=True)
    pool = training.CropPool(str(tmp_path), capacity=4, size=4)
    with pytest.raises(ValueError, match='colour'):
        pool.add(np.zeros((1, 4, 4)), np.zeros((1, 21, 3)), np.ones((1, 21), bool),
                 np.zeros((1, 4, 4, 3), np.uint8))
    colour_pool = training.CropPool(str(tmp_path), capacity=4, size=4, color=True)
    training.save_chunk(str(tmp_path), 'chunk_a_000000.npz', {
        'patches': np.zeros((2, 4, 4), np.float16), 'joints': np.zeros((2, 21, 3), np.float32),
        'mask': np.ones((2, 21), bool)})
    with pytest.raises(ValueError, match='no colour crops'):
        colour_pool.refresh()


def test_crop_pool_keeps_the_newest_crops_and_prunes_files(tmp_path):
    pool = training.CropPool(str(tmp_path), capacity=6, size=4)
    for index in range(4):
        training.save_chunk(str(tmp_path), f'chunk_a_{index:06d}.npz', {
            'patches': np.full((3, 4, 4), index, np.float16),
            'joints': np.zeros((3, 21, 3), np.float32), 'mask': np.ones((3, 21), bool)})
        os.utime(tmp_path / f'chunk_a_{index:06d}.npz', (index, index))
    assert pool.refresh() == 12 and len(pool) == 6
    assert sorted(set(pool.patches[:, 0, 0].tolist())) == [2.0, 3.0]
    assert sorted(p.name for p in tmp_path.glob('*.npz')) == ['chunk_a_000002.npz',
                                                              'chunk_a_000003.npz']
    assert pool.refresh() == 0


def test_an_interrupt_while_files_are_written_waits_for_them(request):
    import signal
    import threading

    def ctrl_c():
        # To this thread: handled before pthread_kill returns (a signal to the process may
        # be taken by another thread, and reach Python only after the block has ended).
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    # A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and
    # then there is no Ctrl-C to hold: give this process Python's own handler meanwhile.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with training.deferred_interrupts():
            ctrl_c()                              # Ctrl-C in the middle of a checkpoint
            steps.append('written')
    assert steps == ['written']
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with training.deferred_interrupts():          # nothing held: nothing raised
        steps.append('again')
    # An error of the block itself is not replaced by a held interrupt.
    with pytest.raises(OSError, match='disk full'):
        with training.deferred_interrupts():
            ctrl_c()
            raise OSError('disk full')
