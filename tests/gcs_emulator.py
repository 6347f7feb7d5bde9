"""gcp-storage-emulator with the object generations of Cloud Storage that tensorstore needs.

  python tests/gcs_emulator.py start --host 127.0.0.1 --port P --in-memory --default-bucket B

The emulator (2026.7.19) sends no `x-goog-generation` header with an object's bytes and ignores
the `ifGenerationMatch` / `ifGenerationNotMatch` preconditions. Orbax's checkpoints are OCDBT
databases whose manifest tensorstore updates by conditional writes; without those semantics a
save fails now and then ("Malformed StorageGeneration": a generation read as 0) or loses an
update. Cloud Storage has them. This wrapper adds them to the emulator's media download and
upload handlers, then runs the emulator's own command line; the library under test sees an
ordinary endpoint through STORAGE_EMULATOR_HOST / TENSORSTORE_GCS_HTTP_URL.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert = objects.download, objects.insert


def _generation(storage, bucket: str, name: str) -> int:
  """The object's generation; 0 when it does not exist (Cloud Storage's convention)."""
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return 0


def _precondition(request, generation: int, read: bool) -> HTTPStatus | None:
  """412 when ifGenerationMatch fails; for a read, 304 when ifGenerationNotMatch fails."""
  match = request.query.get("ifGenerationMatch")
  if match and int(match[0]) != generation:
    return HTTPStatus.PRECONDITION_FAILED
  not_match = request.query.get("ifGenerationNotMatch") if read else None
  if not_match and generation and int(not_match[0]) == generation:
    return HTTPStatus.NOT_MODIFIED
  return None


def download(request, response, storage, *args, **kwargs):
  generation = _generation(storage, request.params["bucket_name"],
                           request.params["object_id"])
  status = _precondition(request, generation, read=True)
  if status is not None:
    response.status = status
    return None
  if generation:
    response["x-goog-generation"] = str(generation)
    response["x-goog-metageneration"] = "1"
  return _download(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
  name = request.query.get("name")
  if name:  # Media and resumable uploads name the object in the query (tensorstore: media).
    generation = _generation(storage, request.params["bucket_name"], name[0])
    if _precondition(request, generation, read=False) is not None:
      response.status = HTTPStatus.PRECONDITION_FAILED
      return None
  return _insert(request, response, storage, *args, **kwargs)


# Before the server module builds its route table from these names (`get` calls `download`).
objects.download, objects.insert = download, insert

if __name__ == "__main__":
  from gcp_storage_emulator.__main__ import main
  sys.exit(main(sys.argv[1:]))
