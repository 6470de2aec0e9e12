"""TensorRT engine cache: keys, stale detection, rebuilds, directories; TensorRT on a GPU."""

from dataclasses import replace
import json
import logging
import os
import subprocess

import numpy as np
import pytest

from hand_pose_ros.core.backends.engine_cache import (
    default_cache_dir, EngineCache, EngineKey, prepare_cache_dir)

KEY = EngineKey(onnx_sha256='a' * 64, input_shapes=(('depth', (1, 176, 176)),), max_batch=4,
                precision='fp16', trt_version='10.3.0', gpu_name='NVIDIA Orin')


class Builder:
    """Counts builds and returns distinct engine bytes per call."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return f'engine-{self.calls}'.encode()


def test_default_dir_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert default_cache_dir() == tmp_path / 'xdg' / 'hand_pose_ros' / 'engines'
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert default_cache_dir() == tmp_path / 'home' / '.cache' / 'hand_pose_ros' / 'engines'
    cache = EngineCache()
    assert cache.directory.is_dir() and not str(cache.directory).startswith('/tmp/hand')


def test_every_key_field_changes_the_digest():
    changes = {'onnx_sha256': 'b' * 64, 'input_shapes': (('depth', (1, 128, 128)),),
               'max_batch': 2, 'precision': 'int8', 'trt_version': '8.6.2',
               'gpu_name': 'NVIDIA GeForce RTX 3060'}
    digests = {KEY.digest()}
    for field, value in changes.items():
        changed = replace(KEY, **{field: value})
        assert changed.changed_fields(KEY) == [field]
        digests.add(changed.digest())
    assert len(digests) == 1 + len(changes)
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    with pytest.raises(ValueError, match='precision'):
        replace(KEY, precision='fp8')
    with pytest.raises(ValueError, match='max_batch'):
        replace(KEY, max_batch=0)


def test_build_hit_stale_rebuild_and_force(tmp_path, caplog):
    cache = EngineCache(tmp_path / 'engines')
    build = Builder()
    data, status = cache.load_or_build('a2j', KEY, build)
    assert (data, status, build.calls) == (b'engine-1', 'built', 1)
    path = cache.engine_path('a2j', KEY)
    assert path.read_bytes() == b'engine-1'
    stored = json.loads(cache.key_path(path).read_text())
    assert stored['digest'] == KEY.digest()
    data, status = cache.load_or_build('a2j', KEY, build)
    assert (data, status, build.calls) == (b'engine-1', 'hit', 1)
    upgraded = replace(KEY, trt_version='10.4.0', gpu_name='NVIDIA H100')
    with caplog.at_level(logging.WARNING):
        data, status = cache.load_or_build('a2j', upgraded, build)
    assert (data, status, build.calls) == (b'engine-2', 'rebuilt', 2)
    assert 'stale: trt_version, gpu_name changed' in caplog.text
    assert cache.load_or_build('a2j', upgraded, build)[1] == 'hit'
    assert cache.load_or_build('a2j', upgraded, build, force_rebuild=True)[1] == 'rebuilt'
    assert build.calls == 3


def test_missing_or_corrupt_key_file_triggers_rebuild(tmp_path):
    cache = EngineCache(tmp_path)
    build = Builder()
    cache.load_or_build('m', KEY, build)
    key_path = cache.key_path(cache.engine_path('m', KEY))
    key_path.write_text('{not json')
    assert cache.check('m', KEY)[1] == 'unreadable key file'
    assert cache.load_or_build('m', KEY, build)[1] == 'rebuilt'
    key_path.unlink()
    assert cache.check('m', KEY)[1] == 'no key file'
    assert cache.load_or_build('m', KEY, build)[1] == 'rebuilt'
    assert build.calls == 3
    with pytest.raises(RuntimeError, match='produced no engine'):
        cache.load_or_build('m', replace(KEY, max_batch=8), lambda: b'')


def test_a_damaged_or_replaced_engine_is_rebuilt(tmp_path):
    cache = EngineCache(tmp_path)
    build = Builder()
    cache.load_or_build('m', KEY, build)
    path = cache.engine_path('m', KEY)
    path.write_bytes(b'engine-1'[:5])                     # cut short; its key file intact
    assert cache.check('m', KEY)[1] == 'engine file does not match its key file'
    assert cache.load_or_build('m', KEY, build) == (b'engine-2', 'rebuilt')
    assert cache.load_or_build('m', KEY, build) == (b'engine-2', 'hit')


def test_other_calibration_crops_rebuild_an_int8_engine(tmp_path):
    cache = EngineCache(tmp_path)
    int8 = replace(KEY, precision='int8', calibration='crops 1')
    assert cache.load_or_build('m', int8, lambda: b'scaled by crops 1')[1] == 'built'
    assert cache.check('m', replace(int8, calibration='crops 2'))[1] == \
        'stale: calibration changed'
    # A key file written before the calibration field reads as '' (no calibration).
    key_path = cache.key_path(cache.engine_path('m', KEY))
    cache.load_or_build('m', KEY, lambda: b'fp16')
    record = json.loads(key_path.read_text())
    del record['key']['calibration']
    record['digest'] = EngineKey.from_dict(record['key']).digest()
    key_path.write_text(json.dumps(record))
    assert cache.check('m', KEY)[1] is None


def test_int8_calibration_tables_belong_to_one_key(tmp_path):
    cache = EngineCache(tmp_path)
    int8 = replace(KEY, precision='int8')
    table = cache.calibration_path('m', int8)
    assert table.parent == cache.directory and table.suffix == '.calib'
    table.write_bytes(b'scales of model 1')
    assert cache.calibration_path('m', int8) == table and table.is_file()    # kept
    retrained = replace(int8, onnx_sha256='b' * 64)
    new_table = cache.calibration_path('m', retrained)
    assert new_table != table and not table.exists()      # the old model's scales go
    new_table.write_bytes(b'scales of model 2')
    assert cache.calibration_path('m', retrained, fresh=True) == new_table
    assert not new_table.exists()                         # force_rebuild calibrates again


def test_unusable_cache_directories_raise_clear_errors(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(ValueError, match='is not a directory'):
        prepare_cache_dir(blocker)
    with pytest.raises(ValueError, match='cannot be created'):
        prepare_cache_dir(blocker / 'engines')
    # procfs refuses new files even for root: a real read-only directory.
    with pytest.raises(ValueError, match='is not writable'):
        prepare_cache_dir('/proc/self')


def test_cache_paths_are_resolved_before_anything_is_written(tmp_path, monkeypatch):
    real = tmp_path / 'real'
    real.mkdir()
    (tmp_path / 'link').symlink_to(real)
    assert EngineCache(tmp_path / 'link').directory == real
    monkeypatch.chdir(tmp_path)
    assert EngineCache('link/../real/engines').directory == real / 'engines'
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert prepare_cache_dir('~/engines') == tmp_path / 'home' / 'engines'


@pytest.fixture
def full_dir(tmp_path):
    """Return a directory on a real 256 KiB tmpfs filled to the last block."""
    mount_point = tmp_path / 'small_disk'
    mount_point.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs',
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a small tmpfs here: {mounted.stderr.strip()}')
    try:
        engines = mount_point / 'engines'
        engines.mkdir()
        filler = os.open(mount_point / 'filler', os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match='No space left'):
                while True:
                    os.write(filler, b'x' * 4096)
        finally:
            os.close(filler)
        yield engines
    finally:
        subprocess.run(['umount', str(mount_point)], check=True)


def test_full_cache_directory_keeps_the_engine_in_memory(full_dir, caplog):
    cache = EngineCache(full_dir)

    def build():
        return b'e' * 65536

    with caplog.at_level(logging.WARNING):
        data, status = cache.load_or_build('a2j', KEY, build)
    assert data == build()
    assert status == 'built, not cached (No space left on device)'
    assert 'not cached: cannot write to' in caplog.text
    assert list(full_dir.iterdir()) == []  # no partial engine or key left behind
    (full_dir.parent / 'filler').unlink()
    assert cache.load_or_build('a2j', KEY, build)[1] == 'built'
    assert cache.load_or_build('a2j', KEY, build)[1] == 'hit'


def test_tensorrt_engine_matches_onnxruntime(tmp_path):
    """GPU only: build an FP32 and an FP16 engine from a tiny A2J and compare with ORT."""
    pytest.importorskip('tensorrt')
    import torch

    if not torch.cuda.is_available():
        pytest.skip('TensorRT needs a CUDA device')
    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.backends import create_backend
    from hand_pose_ros.core.models import build_model

    model = build_model('a2j', backbone='resnet18', width=0.25, input_size=64,
                        head_channels=32).eval()
    card = model_io.save_model(model, tmp_path, 'a2j')
    export.export_card(card)
    batch = export.example_inputs(model, 3)['depth']
    reference = create_backend('onnxruntime', card)(batch)
    for precision, tolerance in (('fp32', 1e-3), ('fp16', 2e-2)):
        backend = create_backend('tensorrt', card, precision=precision, max_batch=4,
                                 cache_dir=tmp_path / 'engines')
        assert backend.cache_status == 'built'
        np.testing.assert_allclose(backend(batch)['joints'], reference['joints'],
                                   atol=tolerance)


def test_a_key_written_before_the_gpu_fields_reads_back_and_counts_as_changed():
    old = {k: v for k, v in KEY.to_dict().items() if k not in ('gpu_capability', 'gpu_sm_count')}
    assert EngineKey.from_dict(old) == KEY
    orin_nano = replace(KEY, gpu_capability='8.7', gpu_sm_count=8)
    orin_agx = replace(KEY, gpu_capability='8.7', gpu_sm_count=16)
    assert orin_agx.changed_fields(orin_nano) == ['gpu_sm_count']
    assert orin_agx.digest() != orin_nano.digest()
