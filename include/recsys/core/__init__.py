"""Building blocks with no project imports but ``errors``: integer id maps and codes (ids),
atomic file I/O (io), the run context and its work-folder layout (run, paths), memory release,
number formatting (fmt), ``metric@k`` keys (metric_key), storage URIs (uri), privacy pseudonyms,
crash points."""
