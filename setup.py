"""ament_python package qwen_vl_ros: Qwen2.5-VL on the AX650N NPU as a ROS 2 node."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'qwen_vl_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'numpy',
        'ml_dtypes',
        'opencv-python-headless',
        'transformers',
        'jinja2',  # transformers renders the chat template with it (not its own dependency)
        'onnxruntime',
        # the onnxruntime backend reads where each weight lies in a layer's shared weights
        # file (runtime/onnx.py: WeightMaps), so that its shape groups hold it once
        'onnx',
        'pyyaml',
        'llguidance>=1.9,<2',  # constrained answers (choices, JSON Schema, regex)
    ],
    extras_require={
        # torch is needed only to export Hugging Face checkpoints, never at run time.
        # onnx-ir: onnxruntime's MatMulNBits quantizer (--weights int8) imports it
        'export': ['torch', 'onnx-ir'],
        'bag': ['rosbags'],
    },
    zip_safe=True,
    maintainer='qwen_vl_ros developers',
    maintainer_email='dev@qwen-vl-ros.invalid',
    description='Qwen2.5-VL descriptions of a camera topic, on the Axera AX650N NPU',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'describe_node = qwen_vl_ros.ros.node:main',
            'describe_managed_node = qwen_vl_ros.ros.managed:main',
            'qwen-vl-describe = qwen_vl_ros.cli.describe:main',
            'qwen-vl-export = qwen_vl_ros.export.cli:main',
            'qwen-vl-replay = qwen_vl_ros.replay.cli:main',
        ],
    },
)
