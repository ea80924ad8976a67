"""An application's tasks, tested in test_shop_tasks.py with uno_jobs' pytest fixtures."""

from uno_jobs import task


@task(name="shop.total")
def total(prices: list[float], discount: float = 0.0) -> float:
    return round(sum(prices) * (1 - discount), 2)


@task(name="shop.charge", max_retries=2, retry_delay=0)
async def charge(order_id: str, attempts_to_fail: int, ledger: list[str] | None = None) -> str:
    charge.calls = getattr(charge, "calls", 0) + 1
    if charge.calls <= attempts_to_fail:
        raise ConnectionError(f"payment gateway down (call {charge.calls})")
    return f"charged {order_id}"
