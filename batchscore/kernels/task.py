"""What a model predicts, in its own module so that the tree IR and the kernel base can both
name it without importing each other."""

from typing import Literal

Task = Literal["regression", "binary", "multiclass"]
