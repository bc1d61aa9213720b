"""Task registry: generated offline tasks and loaders for the paper's six tasks (Sec. 3, App. A)."""

from intrudim.tasks.base import Example, Task, TaskInfo
from intrudim.tasks.registry import get_task, list_tasks, task_names

__all__ = ["Example", "Task", "TaskInfo", "get_task", "list_tasks", "task_names"]
