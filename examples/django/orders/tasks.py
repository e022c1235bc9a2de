"""The shop's background work: two Django tasks and one of Conveyor's own.

``python manage.py conveyor_worker -q default,mail`` runs all three: it imports this module
(every installed app's ``tasks``) before its first job.
"""

try:
    from django.tasks import task  # Django 6.0 and later
except ImportError:
    from django_tasks import task  # the backport, on Django 4.2 to 5.2

from conveyor.contrib.django import get_app

from .models import Order

app = get_app()  # settings.CONVEYOR's app: the one Django's tasks are sent with


@task(queue_name="mail", priority=50)
def send_receipt(order_id: int) -> str:
    """Reads and updates the order with the ORM: it runs after the order is committed."""
    order = Order.objects.get(pk=order_id)
    order.receipt_sent = True
    order.save(update_fields=["receipt_sent"])
    return f"receipt for {order} sent to {order.email}"


@task()
async def count_orders() -> int:
    """An async task: the ORM's async methods, on the worker's event loop."""
    return await Order.objects.acount()


@app.task(retries=3, backoff=1)
def restock(item: str, quantity: int) -> str:
    """One of Conveyor's own tasks, with retries: ``restock.delay(...)``."""
    return f"restocked {quantity} x {item}"
