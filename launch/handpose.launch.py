"""Start the handpose node: ``ros2 launch handpose_ros handpose.launch.py [name:=value ...]``.

Arguments (only these; every other setting lives in the YAML given as ``config``):

- ``config``:      parameter file (default: the package's config/depth_deep_prior.yaml).
- ``image``:       image topic remapped onto the node's ``image``.
- ``camera_info``: camera info topic remapped onto the node's ``camera_info``.
- ``namespace``:   namespace of the node (outputs: <namespace>/handpose/keypoints, ...).
- ``model``:       checkpoint path or default:depth / default:rgb. It overrides the YAML's
                   ``model``, so with config:=.../rgb_cpm.yaml also pass model:=default:rgb
                   (or a CPM checkpoint).

Example, RGB:
  ros2 launch handpose_ros handpose.launch.py \
    config:=$(ros2 pkg prefix handpose_ros)/share/handpose_ros/config/rgb_cpm.yaml \
    model:=default:rgb image:=/camera/color/image_raw camera_info:=/camera/color/camera_info

The node configures and activates itself (parameter ``autostart``); drive it with
``ros2 lifecycle set /handpose <transition>`` when autostart is false.
"""

# ruff takes `launch` for this repository's launch/ folder and would split the block.
from launch import LaunchDescription  # noqa: I001
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value=PathJoinSubstitution(
                    [FindPackageShare("handpose_ros"), "config", "depth_deep_prior.yaml"]
                ),
                description="ROS parameter YAML for the node",
            ),
            DeclareLaunchArgument(
                "image", default_value="/camera/depth/image_rect_raw", description="input image topic"
            ),
            DeclareLaunchArgument(
                "camera_info", default_value="/camera/depth/camera_info", description="camera info topic"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
            DeclareLaunchArgument(
                "model",
                default_value="default:depth",
                description="checkpoint path or default:depth / default:rgb (overrides the YAML)",
            ),
            LifecycleNode(
                package="handpose_ros",
                executable="handpose_node",
                name="handpose",
                namespace=LaunchConfiguration("namespace"),
                parameters=[LaunchConfiguration("config"), {"model": LaunchConfiguration("model")}],
                remappings=[
                    ("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info")),
                ],
                output="screen",
            ),
        ]
    )
