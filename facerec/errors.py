"""Every error facerec raises on purpose: few, named, and mapped once by each entrypoint.

Transient errors say a dependency is unavailable for now: the work is retried with backoff
(facerec.retry) and uses no delivery attempt. Permanent errors say retrying cannot help:
rest answers a JSON 4xx, the worker dead-letters the message with the reason.
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


class TooManyNames(PermanentError):
    """An image has as many names as one image may have (facerec.store.MAX_NAMES)."""


class ImageMissing(PermanentError):
    """The image store has no object for a hash a message refers to."""


class TransientError(FacerecError):
    """A dependency is unavailable for now."""


class BrokerUnavailable(TransientError):
    """RabbitMQ could not be reached or did not confirm a publish."""


class RedisUnavailable(TransientError):
    """Redis could not be reached, is loading, or refuses writes (out of memory, read-only)."""


class ImageStoreUnavailable(TransientError):
    """The image store (IMAGE_STORE) could not be reached or refused the operation."""


class SearchUnavailable(TransientError):
    """No worker is serving searches, or none answered in time."""
