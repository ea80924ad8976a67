"""Throughput benchmarks: uno_jobs against raw kombu, Celery and Dramatiq in one run.

Run ``python benchmarks/run.py --help``; see ``benchmarks/README.md`` for the method.
"""
