"""lrtrain: a command-line training runner for studying learning rates."""

__version__ = "0.1.0"
