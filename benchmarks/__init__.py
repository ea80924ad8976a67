"""Benchmarks: uno_jobs against raw kombu, Celery and Dramatiq in one run, and a soak test.

Run ``python -m benchmarks.run --help`` and ``python -m benchmarks.soak --help``; see
``benchmarks/README.md`` for the method.
"""
