"""The few errors the service distinguishes, mapped once by each entrypoint.

Transient errors are retried with backoff (the message stays unacknowledged); permanent
errors reach the caller as a JSON 4xx or put the message in the dead-letter queue.
"""


class FacerecError(Exception):
    """Base class of every error raised on purpose by facerec."""


class PermanentError(FacerecError):
    """Retrying cannot help: bad input, malformed message."""


class InvalidImage(PermanentError):
    """The bytes are not a decodable image of an accepted format and size."""


class InvalidMessage(PermanentError):
    """A queue message whose header or body fails validation."""


class FetchError(PermanentError):
    """A URL could not be fetched or did not yield an image."""


class ForbiddenURL(PermanentError):
    """A URL refused before fetching: bad scheme, internal address, malformed."""


class TransientError(FacerecError):
    """A dependency is unavailable for now: Redis, RabbitMQ."""


class BrokerUnavailable(TransientError):
    """RabbitMQ could not be reached or did not confirm a publish."""
