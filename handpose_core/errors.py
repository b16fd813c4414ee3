"""The one exception type of the library.

Every invalid input the library can see (a wrong image shape or dtype, bad intrinsics, a corrupt
checkpoint, a file in the wrong format) raises :class:`HandPoseError` with a message naming the
problem, so callers (the ROS node, the CLIs) need to catch exactly one type.
"""


class HandPoseError(ValueError):
    """Invalid input to handpose: the message names the problem in one line."""
