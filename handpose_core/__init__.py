"""handpose_core: hand keypoint models, codecs, data and training. Never imports rclpy.

The public entry point is :class:`HandPoseEstimator` (imported lazily so that light users,
such as the data generator CLI, do not pay for torch start-up they do not need).
"""

from handpose_core.errors import HandPoseError

__all__ = ["HandPoseError", "HandPoseEstimator", "HandPose"]


def __getattr__(name: str):
    if name in ("HandPoseEstimator", "HandPose"):
        from handpose_core import estimator

        return getattr(estimator, name)
    raise AttributeError(name)
