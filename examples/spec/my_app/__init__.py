"""A stand-in application package for the "Task Discovery: Module Path" example."""
