"""Finding raw dataset files on disk or downloading them, always checked against an official MD5.

Three helpers that every dataset family can use:

* `md5_of(path)`: the MD5 hex digest of a file, read in chunks.
* `fetch_verified(url, dest_path, md5, timeout=...)`: downloads into a temporary file next to `dest_path`,
  checks the MD5 and only then renames it into place (atomic on one file system). On any failure the
  temporary file is deleted, so a half-written or corrupt file never sits at `dest_path`.
* `locate_or_fetch(file_name, md5, raw_dir=..., cache_dir=..., url=..., download=...)`: the file the user
  placed in the raw folder (`$MEDUNLEARN_DATA_DIR/<family>/`) if there is one, else a verified copy in the
  download cache, else a fresh verified download when downloads are allowed.

Every failure (missing file, wrong checksum, no network) is an `errors.DataError` with a one-line message
that says what to do.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

from medunlearn_jax import errors
from medunlearn_jax.data import paths

DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_USER_AGENT = 'medunlearn_jax-downloader/1.0'

log = logging.getLogger(__name__)


def md5_of(path: str | os.PathLike) -> str:
  """MD5 hex digest (lower case) of the file at `path`."""
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _no_internet_hint() -> str:
  return (f'if this machine has no internet access, download the file elsewhere and put it in the raw '
          f'data folder (set {paths.RAW_DIR_ENV} to its root)')


def fetch_verified(url: str, dest_path: str | os.PathLike, md5: str, *,
                   timeout: float = DEFAULT_TIMEOUT_S) -> pathlib.Path:
  """Downloads `url` to `dest_path` and returns it, only if the bytes have MD5 `md5`.

  The bytes go to a temporary file in the destination folder, are hashed while they arrive, and the file is
  renamed to `dest_path` (replacing what was there) only when the MD5 matches. On a mismatch, a network
  error, or an interrupt, the temporary file is deleted and nothing at `dest_path` changes.

  Args:
    url: http(s) address of the file.
    dest_path: where the verified file ends up; its folder is created if needed.
    md5: expected MD5 hex digest.
    timeout: seconds to wait for the connection and for each read.

  Raises:
    errors.DataError: the download failed or its MD5 is not `md5`.
  """
  if not md5:
    raise errors.DataError(f'refusing to download {url} without a known MD5 checksum')
  dest = pathlib.Path(dest_path)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
  tmp = pathlib.Path(tmp_name)
  try:
    digest = hashlib.md5()
    n_bytes = 0
    with os.fdopen(fd, 'wb') as out:
      try:
        request = urllib.request.Request(url, headers={'User-Agent': _USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
          while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            n_bytes += len(chunk)
      except urllib.error.HTTPError as e:
        raise errors.DataError(
            f'could not download {url}: HTTP {e.code} {e.reason}; {_no_internet_hint()}') from e
      except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, 'reason', None) or e
        raise errors.DataError(f'could not download {url}: {reason}; {_no_internet_hint()}') from e
      except (OSError, http.client.HTTPException, ValueError) as e:  # bad URL, broken reply, disk full
        raise errors.DataError(
            f'could not download {url} to {dest.parent}: {e}; {_no_internet_hint()}') from e
    actual = digest.hexdigest()
    if actual != md5.lower():
      raise errors.DataError(
          f'MD5 mismatch for {url} ({n_bytes} bytes): expected {md5.lower()}, got {actual}; the download is '
          f'corrupt or not the official file, nothing was saved to {dest}')
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  log.info('downloaded %s to %s (%d bytes, MD5 %s verified)', url, dest, n_bytes, md5)
  return dest


def locate_or_fetch(file_name: str, md5: str | None, *, raw_dir: str | os.PathLike | None,
                    cache_dir: str | os.PathLike, url: str | None, download: bool,
                    allow_unverified: bool = False, family: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT_S) -> pathlib.Path:
  """The verified path of a raw file: from `raw_dir`, else from the download cache, else downloaded.

  Order of look-up:
    1. `raw_dir/file_name` (a file the user placed there): its MD5 must be `md5`, else DataError (corrupt).
    2. `cache_dir/file_name` (an earlier verified download): reused when its MD5 matches; a cached copy with
       a wrong MD5 is deleted.
    3. when `download` is true, `url` is fetched into `cache_dir/file_name` with `fetch_verified`.
    Otherwise a DataError says where the file was looked for and how to provide it.

  When `md5` is None (no official checksum known), a local file in `raw_dir` is used only when
  `allow_unverified` is true, and nothing is ever downloaded.

  `family` (e.g. 'medmnist'), the raw sub-folder under `$MEDUNLEARN_DATA_DIR`, only makes messages precise.

  Raises:
    errors.DataError: as described above.
  """
  raw_path = pathlib.Path(raw_dir) / file_name if raw_dir is not None else None
  cache_path = pathlib.Path(cache_dir) / file_name
  md5 = md5.lower() if md5 else None

  if raw_path is not None and raw_path.is_file():
    if md5 is None:
      if not allow_unverified:
        raise errors.DataError(
            f'no official checksum known for {file_name}, so {raw_path} cannot be verified; pass '
            f'allow_unverified=True to use it anyway')
      log.warning('using %s without checksum verification (allow_unverified=True)', raw_path)
      return raw_path
    actual = md5_of(raw_path)
    if actual != md5:
      raise errors.DataError(
          f'{raw_path} is corrupt or not the official file: MD5 expected {md5}, got {actual}; replace it '
          f'with the official file')
    return raw_path

  where = str(raw_path) if raw_path is not None else f'the raw data folder ({paths.RAW_DIR_ENV} is not set)'
  env_path = (f'${paths.RAW_DIR_ENV}/{family}/{file_name}' if family
              else f'the raw folder under ${paths.RAW_DIR_ENV}')
  target = f'{raw_path} (raw files live at {env_path})' if raw_path is not None else env_path
  if md5 is None:
    raise errors.DataError(
        f'no official checksum known for {file_name}, so it is never downloaded; place the file at {target} '
        f'and pass allow_unverified=True')

  if cache_path.is_file():
    if md5_of(cache_path) == md5:
      return cache_path
    log.warning('deleting cached %s: its MD5 is not %s', cache_path, md5)
    cache_path.unlink(missing_ok=True)

  if not download or not url:
    reason = 'downloads are disabled' if not download else 'no download address is known'
    raise errors.DataError(
        f'{file_name} not found: looked at {where} and {cache_path}, and {reason}; put the official file '
        f'(MD5 {md5}) at {target}' + (f', or allow downloading from {url}' if url else ''))
  return fetch_verified(url, cache_path, md5, timeout=timeout)
