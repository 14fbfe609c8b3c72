"""Edge producers: audio sources (file, stdin, microphone) and the publisher that writes a
session's chunks to its Redis stream."""

from producer.publisher import Publisher, PublisherStats, PublishFailed, SyncPublisher

__all__ = ["PublishFailed", "Publisher", "PublisherStats", "SyncPublisher"]
