"""Install handpose as a ROS 2 ament_python package (``colcon build``) or a plain pip package.

``colcon build`` reads ``setup.cfg`` so that the executables land in ``lib/handpose_ros`` (where
``ros2 run`` looks); ``pip install -e .`` and ``pip install .`` put them on the venv's PATH.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "handpose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Hand keypoints from depth (DeepPrior) or RGB (CPM) cameras for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    # training/ and bench/ are run from a checkout (python -m training.train_deep_prior); only the
    # library and the node are installed.
    packages=find_packages(include=["handpose_core", "handpose_core.*", "handpose_ros", "handpose_ros.*"]),
    package_data={"handpose_core": ["weights/*.pt"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # rclpy and the message packages come from the ROS distribution (or the ros-* PyPI
    # wheels in requirements.txt); they are not pip requirements of the library.
    install_requires=["numpy", "opencv-python-headless", "h5py", "scipy", "tqdm", "torch>=2.4,<2.14"],
    # onnxruntime + onnx: the fast CPU backend; without them the pipelines run in torch
    extras_require={"onnx": ["onnxruntime", "onnx"]},
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "handpose_node = handpose_ros.node:main",
            "handpose-synth = handpose_core.data.synthetic_cli:main",
            "handpose_camera_source = handpose_ros.camera_source:main",
            "handpose-bag = handpose_ros.bag_tool:main",
            "handpose-info = handpose_core.checkpoint_info:main",
        ],
    },
)
