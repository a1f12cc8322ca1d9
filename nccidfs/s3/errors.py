"""S3's error codes mapped onto the nccidfs hierarchy (:mod:`nccidfs.errors`), from botocore's exceptions
and from :class:`~nccidfs.s3.get.GetError` alike: both carry botocore's ``response`` shape."""

from __future__ import annotations

from nccidfs.errors import AccessDenied, CorruptData, NccidfsError, NotFound, ObjectChanged, TransientError

NOT_FOUND = ("NoSuchKey", "404", "NotFound")
NO_BUCKET = "NoSuchBucket"
DENIED = ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch")
PRECONDITION_FAILED = ("PreconditionFailed", "412")
# A range that starts at or after the object's end (S3 answers 416): the object is shorter than listed.
INVALID_RANGE = "InvalidRange"


def error_code(error: Exception) -> str:
    """S3's code for an error (``NoSuchKey``, ``SlowDown``...), else the exception's class name."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(error).__name__))


def classify(error: Exception, what: str) -> NccidfsError:
    """Map a boto3/botocore exception to the nccidfs hierarchy, with a message safe to log; any code not
    known to be final is transient (retried until the deadline)."""
    code = error_code(error)
    if code in NOT_FOUND:
        return NotFound(f"{what}: not found")
    if code == NO_BUCKET:
        return NotFound(f"{what}: bucket does not exist")
    if code in DENIED:
        return AccessDenied(f"{what}: access denied ({code})")
    if code in PRECONDITION_FAILED:
        return ObjectChanged(f"{what}: object changed since it was listed")
    if code == INVALID_RANGE:
        return CorruptData(f"{what}: the range reaches past the object's end")
    return TransientError(f"{what}: {code}")
