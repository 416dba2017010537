from .backbones import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .mask_sources import *  # noqa: F401,F403
from .keypoints import *  # noqa: F401,F403
