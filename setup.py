"""ament_python build of hand_pose_ros; also installable with plain pip."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'hand_pose_ros'

CONSOLE_SCRIPTS = {
    'hand_pose_node': 'hand_pose_ros.ros.hand_pose_node:main',
    'hand_filter_node': 'hand_pose_ros.ros.hand_filter_node:main',
    'synthetic_camera_node': 'hand_pose_ros.ros.synthetic_camera_node:main',
    'hand_pose_pipeline': 'hand_pose_ros.ros.pipeline:main',
    'hand_pose_synth': 'hand_pose_ros.cli.synth:main',
    'hand_pose_train': 'hand_pose_ros.cli.train:main',
    'hand_pose_train_finder': 'hand_pose_ros.cli.train_finder:main',
    'hand_pose_evaluate': 'hand_pose_ros.cli.evaluate:main',
    'hand_pose_export': 'hand_pose_ros.cli.export:main',
    'hand_pose_bench': 'hand_pose_ros.cli.bench:main',
    'hand_pose_filter_eval': 'hand_pose_ros.cli.filter_eval:main',
    'hand_pose_demo': 'hand_pose_ros.cli.demo:main',
    'hand_pose_soak': 'hand_pose_ros.cli.soak:main',
    'hand_pose_selftrain': 'hand_pose_ros.cli.selftrain:main',
    'hand_pose_process': 'hand_pose_ros.cli.process:main',
}

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.rviz')),
        (f'share/{PACKAGE}/models', [f for f in glob('models/*') if os.path.isfile(f)]),
    ],
    install_requires=['setuptools', 'numpy', 'scipy', 'pyyaml', 'pillow', 'safetensors',
                      'onnxruntime'],
    extras_require={'train': ['torch', 'onnx'], 'selftrain': ['rosbags']},
    zip_safe=True,
    maintainer='hand_pose_ros maintainers',
    maintainer_email='maintainers@hand-pose-ros.org',
    description='3D hand pose estimation from depth images for ROS 2.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={'console_scripts': [f'{k} = {v}' for k, v in CONSOLE_SCRIPTS.items()]},
)
