"""``python manage.py place_order EMAIL ITEM [QUANTITY]``: what a view would do, with a
worker running (``python manage.py conveyor_worker -q default,mail``)."""

from django.core.management.base import BaseCommand
from django.db import transaction

from orders.models import Order
from orders.tasks import app, count_orders, restock, send_receipt


class Command(BaseCommand):
    help = "Place an order, send its receipt in the background, and wait for it."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("item")
        parser.add_argument("quantity", type=int, nargs="?", default=1)

    def handle(self, email, item, quantity, **options):
        with transaction.atomic():
            order = Order.objects.create(email=email, item=item, quantity=quantity)
            # Sent when the transaction commits: the worker cannot run it before the
            # order exists, and a rollback would send nothing.
            receipt = send_receipt.enqueue(order.pk)
            self.stdout.write(f"placed {order}; receipt task {receipt.status} (not sent yet)")

        # TaskResult.id is the Conveyor job's id: wait for it without polling.
        app.job(receipt.id).result(timeout=60)
        receipt.refresh()
        self.stdout.write(f"receipt task {receipt.status}: {receipt.return_value}")
        order.refresh_from_db()
        self.stdout.write(f"order {order.pk} receipt_sent={order.receipt_sent}")

        counted = count_orders.enqueue()
        app.job(counted.id).result(timeout=60)
        counted = count_orders.get_result(counted.id)  # from any process, by id
        self.stdout.write(f"orders in the shop: {counted.return_value}")

        self.stdout.write(f"conveyor task: {restock.delay(item, 10).result(timeout=60)}")
