"""Model monitoring: training profiles of a model's inputs and predictions, and drift between a
run's profile and the training one.

The core here (`profile`, `accumulate`, `drift`) never imports pyspark: the same code profiles a
training table with pyarrow on one machine and an Arrow batch inside a Spark task, and compares
profiles on the driver. Every statistic is mergeable (moments, KLL quantile sketches, counts,
categories), so tasks profile their own rows and the driver adds the results up.
"""
