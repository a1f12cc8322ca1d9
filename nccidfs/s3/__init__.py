"""The S3 backend of the storage seam: the boto3 store (:mod:`.store`), its ranged GETs (:mod:`.get`), its
listing page parser (:mod:`.listparse`) and the mapping of S3's errors onto nccidfs's (:mod:`.errors`).
The only package that imports boto3 or botocore, and the only one that knows an S3 ETag may be an MD5
(:mod:`.etag`). Importing the package imports neither."""
