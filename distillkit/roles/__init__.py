from distillkit.roles.critic import BuildEnv, Critic
from distillkit.roles.student import Student
from distillkit.roles.teacher import Teacher

__all__ = ["BuildEnv", "Critic", "Student", "Teacher"]
