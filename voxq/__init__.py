"""voxq: live call audio from Redis streams to speech vendors and back."""

__version__ = "0.1.0"
