"""Numpy scoring kernels: what a model becomes once the planner can see inside it."""

from batchscore.kernels.base import Kernel, Matrix, ScoreOutput, Task

__all__ = ["Kernel", "Matrix", "ScoreOutput", "Task"]
