"""The served tables: versioned Parquet, the commit log and CURRENT, retention, storage
(local and object stores), the reader, the HTTP service, Assets and freshness."""
