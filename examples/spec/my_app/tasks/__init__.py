"""The application's tasks, one module per area."""
