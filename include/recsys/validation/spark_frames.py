"""What the GX suite runner needs to run on a Spark DataFrame (backend=spark): recognising one,
its column types for the dtype contract, and datetime parameters as Spark compares them."""

from __future__ import annotations

from typing import Any


def is_spark(df: Any) -> bool:
    """A Spark DataFrame (backend=spark): the suite runs through GX's Spark datasource."""
    return type(df).__module__.startswith("pyspark.")


class SparkColumn:
    """A Spark column's type where the dtype contract reads a pandas Series."""

    def __init__(self, df: Any, name: str) -> None:
        self.type = df.schema[name].dataType
        self.dtype = self.type.simpleString()


SPARK_KINDS = {
    "integer": ("ByteType", "ShortType", "IntegerType", "LongType"),
    "float": ("FloatType", "DoubleType"),
    "string": ("StringType",),
    "datetime_utc": ("TimestampType",),  # an instant (UTC); TimestampNTZType has no zone
}


def naive_utc(parameters: dict[str, Any]) -> dict[str, Any]:
    """Datetime parameters as naive UTC for GX on Spark: Spark hands column statistics (max
    event_ts) back as naive datetimes in the session zone, which the backend sets to UTC."""
    from datetime import datetime, timezone

    return {
        k: v.astimezone(timezone.utc).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v
        for k, v in parameters.items()
    }
