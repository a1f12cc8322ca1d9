"""The storage seam over S3: :class:`~nccidfs.store.protocol.ObjectStore` with :mod:`nccidfs.s3.get` for
listing pages and ranged GETs (boto3 finds the credentials, region and the bucket's URL); the layers above
see only the protocol. Listings always use a prefix that ends in ``/`` with delimiter ``/`` because the
warehouse's IAM policy refuses any other form.

A listing is bounded whatever the server says: all its pages together must arrive within the deadline,
stay under :data:`MAX_PAGES` pages and :data:`MAX_ENTRIES` entries, and never repeat a continuation
token; a page that says the listing goes on but gives no token is an error too. Any of these fails the
whole listing, so a partial listing is never taken for a complete one.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.errors import ConfigError, CorruptData, NccidfsError, TransientError
from nccidfs.objects import Listing, ObjectInfo
from nccidfs.s3.errors import INVALID_RANGE, classify, error_code
from nccidfs.s3.listparse import ListPage, parse_list_page
from nccidfs.store.stats import GET, LIST, RequestStats

if TYPE_CHECKING:
    from nccidfs.config import S3Config

log = logging.getLogger(__name__)
T = TypeVar("T")

# Far beyond any directory of the warehouse (a patient subtree holds thousands of keys, a modality
# folder thousands of patients), yet a bound on what one listing may hold in memory (about 1 GiB).
MAX_PAGES = 2_000
MAX_ENTRIES = 2_000_000
# A GET body is read in pieces of this size: a part of up to this size is one read and one copy.
BODY_PIECE = 16 * 1024**2
# The pause before retry n is BACKOFF_FIRST * 2**n seconds, at most BACKOFF_MAX, times a random factor in
# [BACKOFF_JITTER, 1) so that many readers retrying at once spread out.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
BACKOFF_JITTER = 0.5
# After this many failed attempts at one request, a WARNING says it is still failing.
WARN_AFTER_ATTEMPTS = 3


class Boto3Store:
    """:class:`~nccidfs.store.protocol.ObjectStore` over :class:`~nccidfs.s3.get.SignedGets` (listing pages
    and GETs; boto3 for credentials and the bucket's URL), with short timeouts and retries until the deadline."""

    def __init__(self, config: S3Config, retry: bool = True, stats: RequestStats | None = None,
                 clock: Clock = REAL_CLOCK) -> None:
        """Without ``retry`` a failed request fails at once: the start-up probe must report an unreachable
        endpoint in seconds. ``clock`` times the deadlines and the back-off between attempts (requests'
        own latencies are measured on the system's clock)."""
        import boto3
        import botocore.session
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import ProfileNotFound

        from nccidfs.s3.get import SignedGets

        self.bucket = config.bucket
        self.stats = stats or RequestStats()
        self._deadline = config.deadline
        self._clock = clock
        self._retry = retry
        core = botocore.session.Session()
        try:
            session = boto3.session.Session(botocore_session=core, profile_name=config.profile)
        except ProfileNotFound:
            raise ConfigError(f"AWS profile {config.profile!r} not found in the AWS config files") from None
        credentials = session.get_credentials()
        if credentials is None:
            raise ConfigError("no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                              "use --profile, or configure ~/.aws/credentials")
        boto_config = BotoConfig(
            region_name=config.region,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            max_pool_connections=config.max_connections,
            s3={"addressing_style": "path"} if config.endpoint_url else {},
            tcp_keepalive=True,
            # No SDK checksums unless S3 requires them: the cache checks each block's CRC and whole objects'
            # MD5 itself, and botocore's own checks cost CPU on every GET.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = session.client("s3", endpoint_url=config.endpoint_url, config=boto_config)
        self._gets = SignedGets(self._client, credentials, self.bucket, connect_timeout=config.connect_timeout,
                                   read_timeout=config.read_timeout, max_connections=config.max_connections,
                                   verify=core.get_config_variable("ca_bundle") or True)

    def _retrying(self, kind: str, what: str, call: Callable[[], T], deadline: float | None = None) -> T:
        """Run ``call`` until it succeeds, fails for good, or the deadline passes (then TransientError).

        Besides a request sent again at once when a kept-alive connection proves closed (see
        :mod:`nccidfs.s3.http`), this loop is the only retry: a refused connection, a timeout, a transient
        error status or a body cut short are tried again, with jittered backoff, for as long as the
        deadline allows (by default ``--timeout`` from now; a listing passes the deadline shared by all
        its pages).
        """
        if deadline is None:
            deadline = self._clock.monotonic() + self._deadline
        for attempt in itertools.count():
            started = time.monotonic()
            try:
                return call()
            except NccidfsError as error:
                failure = error
                code = type(error).__name__
            except Exception as error:
                failure = classify(error, what)
                code = error_code(error)
            self.stats.record(kind, error=code, seconds=time.monotonic() - started)
            log.debug("%s %s failed after %.3fs: %s", kind, what, time.monotonic() - started, code)
            pause = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt) * random.uniform(BACKOFF_JITTER, 1.0)
            if not isinstance(failure, TransientError) or not self._retry or self._clock.monotonic() + pause > deadline:
                raise failure from None
            if attempt + 1 == WARN_AFTER_ATTEMPTS:
                log.warning("%s: still failing (%s); retrying until %.0fs have passed", what, code, self._deadline)
            self._clock.sleep(pause)
        raise AssertionError("unreachable")

    def _list_page(self, query: dict[str, str]) -> ListPage:
        started = time.monotonic()
        try:
            page = parse_list_page(self._gets.list_page(query))
        except (CorruptData, TransientError) as error:
            raise type(error)(f"list {query['prefix']}: {error}") from None
        self.stats.record(LIST, seconds=time.monotonic() - started)
        flat = "" if "delimiter" in query else " (flat)"
        log.debug("LIST %s%s -> %d keys %d prefixes %.3fs", query["prefix"], flat,
                  len(page.objects), len(page.prefixes), time.monotonic() - started)
        return page

    def _pages(self, prefix: str, delimiter: bool = True, max_keys: int | None = None,
               start_after: str = "") -> Iterator[ListPage]:
        """The pages of one listing, checked against the bounds in this module's docstring."""
        query = {"prefix": prefix}
        if delimiter:
            query["delimiter"] = "/"
        if start_after:
            query["start-after"] = start_after
        if max_keys:
            query["max-keys"] = str(max_keys)
        deadline = self._clock.monotonic() + self._deadline
        tokens: set[str] = set()
        entries = 0
        while True:
            page = self._retrying(LIST, f"list {prefix}", lambda: self._list_page(query), deadline)
            yield page
            if max_keys or not page.truncated:
                return
            entries += len(page.objects) + len(page.prefixes)
            token = self._continuation(prefix, page, tokens, entries, deadline)
            tokens.add(token)
            query["continuation-token"] = token

    def _continuation(self, prefix: str, page: ListPage, tokens: set[str], entries: int, deadline: float) -> str:
        """The token of the next page, unless a bad server would make the listing endless or too large."""
        what = f"list {prefix}"
        if not page.token:
            raise CorruptData(f"{what}: the server says the listing goes on but gives no continuation token")
        if page.token in tokens:
            raise CorruptData(f"{what}: the server repeats a continuation token; the listing would never end")
        if len(tokens) + 1 >= MAX_PAGES or entries >= MAX_ENTRIES:
            raise CorruptData(f"{what}: more than {MAX_PAGES} pages or {MAX_ENTRIES} entries; refusing the rest")
        if self._clock.monotonic() >= deadline:
            raise TransientError(f"{what}: not complete after {len(tokens) + 1} pages in {self._deadline:.0f}s")
        return page.token

    def _listing(self, prefix: str, delimiter: bool, start_after: str = "") -> Listing:
        prefixes: list[str] = []
        objects: list[ObjectInfo] = []
        for page in self._pages(prefix, delimiter, start_after=start_after):
            prefixes.extend(page.prefixes)
            objects.extend(page.objects)
        return Listing(tuple(prefixes), tuple(objects))

    def list_dir(self, prefix: str) -> Listing:
        return self._listing(prefix, delimiter=True)

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        if end is None:
            return self._listing(prefix, delimiter=False, start_after=start_after)
        objects: list[ObjectInfo] = []
        for page in self._pages(prefix, delimiter=False, start_after=start_after):
            before = [obj for obj in page.objects if obj.key < end]
            objects.extend(before)
            if len(before) < len(page.objects):
                break  # the run ends inside this page: no need for the next
        return Listing((), tuple(objects))

    def probe(self, prefix: str) -> bool:
        page = next(self._pages(prefix, max_keys=1))
        return bool(page.objects or page.prefixes)

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Resumes a body that breaks off from the byte reached, pinned to ``etag`` with If-Match.

        The body is read in pieces of at most :data:`BODY_PIECE` bytes, so a part of that size or less
        arrives as one ``bytes`` with no further copy, and a break loses at most one piece.
        """
        pieces: list[bytes] = []
        got = 0

        def fetch_rest() -> None:
            nonlocal got
            begin = start + got
            started = time.monotonic()
            body = self._gets.open(key, begin, end, etag)
            before = got
            try:
                while got < end - start and (piece := body.read(min(BODY_PIECE, end - start - got))):
                    pieces.append(piece)
                    got += len(piece)
            finally:
                self.stats.record(GET, got - before, seconds=time.monotonic() - started)
                if got != end - start:
                    body.close()
                body.release_conn()
            log.debug("GET %s bytes=%d-%d -> %d bytes %.3fs", key, begin, end - 1, got - before,
                      time.monotonic() - started)
            if got != end - start:
                raise TransientError(f"get {key}: body ended after {got} of {end - start} bytes")

        self._retrying(GET, f"get {key} [{start}, {end})", fetch_rest)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def get_head(self, key: str, limit: int) -> bytes:
        """The first ``limit`` bytes of ``key`` as it is now (all of it when shorter), in one GET: for an
        object known by its name alone, such as a metadata twin whose folder was never listed. Nothing
        pins a version, so a caller that must know which one uses :meth:`get_range`."""
        from nccidfs.s3.get import GetError

        def fetch() -> bytes:
            try:
                body = self._gets.open(key, 0, limit, None)
            except GetError as error:
                if error_code(error) == INVALID_RANGE:
                    return b""  # an empty object has no byte 0
                raise
            started = time.monotonic()
            try:
                data: bytes = body.read(limit)
            finally:
                body.release_conn()
            self.stats.record(GET, len(data))
            log.debug("GET %s (its first %d bytes) -> %d bytes %.3fs", key, limit, len(data),
                      time.monotonic() - started)
            return data

        return self._retrying(GET, f"get {key} (its first {limit} bytes)", fetch)
