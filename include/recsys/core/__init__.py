"""Building blocks with no project imports but ``errors``: integer id maps, atomic file I/O,
the run context, memory release, privacy pseudonyms, crash points."""
