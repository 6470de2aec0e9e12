import numpy as np
import pytest

from hand_pose_ros.core import skeleton as sk


def test_canonical_order_and_parents():
    assert sk.NUM_JOINTS == 21
    assert sk.JOINT_NAMES[0] == 'wrist'
    assert sk.JOINT_NAMES[4] == 'thumb_tip' and sk.JOINT_NAMES[20] == 'pinky_tip'
    for finger, joints in zip(sk.FINGERS, sk.FINGER_JOINTS):
        assert [sk.JOINT_NAMES[j].split('_')[0] for j in joints] == [finger] * 4
        assert sk.PARENTS[joints[0]] == sk.WRIST
        assert list(sk.PARENTS[joints[1:]]) == list(joints[:-1])
    assert len(sk.BONES) == 20 and len(sk.MEAN_BONE_LENGTHS_MM) == 20
    assert set(sk.PALM_JOINTS) | set(sk.FINGER_GROUP_JOINTS) == set(range(21))


def test_hands2017_mapping_matches_reference():
    # HANDS2017: wrist, MCPs thumb..pinky (1-5), then PIP, DIP, TIP per finger.
    names = ['wrist'] + [f'{f}_mcp' for f in sk.FINGERS]
    for f in sk.FINGERS:
        names += [f'{f}_pip', f'{f}_dip', f'{f}_tip']
    layout = sk.LAYOUTS['hands2017']
    canonical = [names[i] for i in layout.to_canonical]
    # HANDS2017 names the thumb joints MCP/PIP/DIP/TIP: canonical CMC/MCP/IP/TIP.
    assert canonical[1:5] == ['thumb_mcp', 'thumb_pip', 'thumb_dip', 'thumb_tip']
    assert canonical[5:] == list(sk.JOINT_NAMES[5:])
    assert canonical[0] == 'wrist'


def test_msra_mapping_puts_thumb_last():
    layout = sk.LAYOUTS['msra']
    joints = np.arange(21 * 3, dtype=float).reshape(21, 3)
    canonical = layout.canonical_from_layout(joints)
    np.testing.assert_array_equal(canonical[1], joints[17])
    np.testing.assert_array_equal(canonical[5], joints[1])
    np.testing.assert_array_equal(canonical[20], joints[16])


def test_partial_layouts_mark_missing_joints():
    nyu = sk.LAYOUTS['nyu14']
    joints = np.random.default_rng(0).normal(size=(4, 14, 3))
    canonical = nyu.canonical_from_layout(joints)
    assert canonical.shape == (4, 21, 3)
    assert nyu.canonical_mask.sum() == 12
    assert np.isnan(canonical[:, ~nyu.canonical_mask]).all()
    np.testing.assert_array_equal(canonical[:, 0], joints[:, 12])   # wrist
    np.testing.assert_array_equal(canonical[:, 20], joints[:, 0])   # pinky tip
    with pytest.raises(ValueError, match='expects 14 joints'):
        nyu.canonical_from_layout(np.zeros((21, 3)))
    assert sk.LAYOUTS['icvl'].canonical_mask.sum() == 15


def test_bone_and_hand_length_helpers():
    keypoints = np.zeros((21, 3))
    for bone, (parent, child) in enumerate(sk.BONES):
        keypoints[child] = keypoints[parent] + [0, sk.MEAN_BONE_LENGTHS_MM[bone] / 1000, 0]
    np.testing.assert_allclose(sk.bone_lengths(keypoints) * 1000, sk.MEAN_BONE_LENGTHS_MM)
    length_mm = sk.hand_length(keypoints) * 1000
    assert sk.HAND_LENGTH_MM_TYPICAL[0] <= length_mm <= sk.HAND_LENGTH_MM_TYPICAL[1]
    assert sk.palm_center(np.stack([keypoints, keypoints])).shape == (2, 3)
