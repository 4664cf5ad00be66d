"""Lowering to Spark: sessions, scans, joins, scoring with mapInArrow."""
