"""The S3 backend of the storage seam: the boto3 store (:mod:`.store`), its ranged GETs (:mod:`.get`), its
listing page parser (:mod:`.listparse`) and the mapping of S3's errors onto nccidfs's (:mod:`.errors`).
The filesystem's only way to boto3 and botocore (the demo seeds its own server with a client of its own),
and the only package that knows an S3 ETag may be an MD5 (:mod:`.etag`). Importing it imports neither."""
