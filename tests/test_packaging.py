"""The package installs both ways: as a pip package (no ROS) and with ament_python's data layout."""

from __future__ import annotations

import subprocess
import sys
import venv
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_format3_ament_python_with_exec_depends():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "handpose_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "visualization_msgs", "diagnostic_msgs",
                "cv_bridge", "python3-numpy", "python3-opencv", "python3-h5py", "python3-torch-pip"):
        assert dep in deps, dep
    assert (ROOT / "resource" / "handpose_ros").is_file()


def test_wheel_carries_ament_index_launch_and_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("handpose_ros-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = "handpose_ros-0.1.0.data/data/"
    assert data + "share/ament_index/resource_index/packages/handpose_ros" in names
    assert data + "share/handpose_ros/package.xml" in names
    assert data + "share/handpose_ros/launch/handpose.launch.py" in names
    assert any(n.startswith(data + "share/handpose_ros/config/") and n.endswith(".yaml") for n in names)
    assert "handpose_core/estimator.py" in names and "handpose_ros/node.py" in names
    entry_points = zipfile.ZipFile(wheel).read("handpose_ros-0.1.0.dist-info/entry_points.txt").decode()
    assert "handpose_node = handpose_ros.node:main" in entry_points
    assert "handpose-info = handpose_core.checkpoint_info:main" in entry_points


def test_editable_install_in_plain_venv(tmp_path):
    """`pip install -e .` in a venv without ROS: console scripts land on the venv's PATH."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    assert (env_dir / "bin" / "handpose_node").is_file()
    assert (env_dir / "bin" / "handpose-synth").is_file()
    assert (env_dir / "bin" / "handpose-info").is_file()
    out = subprocess.run([str(py), "-c", "import handpose_core; print(handpose_core.HandPoseError.__name__)"],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == "HandPoseError"


def test_missing_packaged_weights_name_the_command_that_makes_them(monkeypatch):
    """A wheel built without the weights must say how to make them, with entry points that exist."""
    import importlib.util

    import pytest

    from handpose_core import HandPoseError, estimator

    monkeypatch.setattr(estimator, "DEFAULT_CHECKPOINTS",
                        {"default:depth": "missing_depth.pt", "default:rgb": "missing_rgb.pt"})
    for name, module in (("default:depth", "training.train_deep_prior"), ("default:rgb", "training.train_cpm")):
        with pytest.raises(HandPoseError, match=f"not installed .*python -m {module} --export .*missing_") as info:
            estimator.resolve_checkpoint(name)
        assert "\n" not in str(info.value)
        assert importlib.util.find_spec(module) is not None
