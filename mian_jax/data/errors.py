"""The data error every converter and pipeline raises (kept import-light: worker processes load it)."""


class DataError(ValueError):
  """Unusable data on disk or in the input files; the message names the file, line or key and the fix."""
