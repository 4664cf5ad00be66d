"""Entry points that run whole jobs on Spark: used by the CLI, the API and spark-submit."""
