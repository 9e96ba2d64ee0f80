"""Revenue per customer per minute: dedupe, a filter, a map and five aggregations.

    streams topics create examples/orders/app.py
    python -m examples.orders.generate --count 20000 \
        | streams publish orders - --key-field customer_id
    streams worker examples/orders/app.py --exit-when-idle 5
    streams verify examples/orders/app.py

Orders arrive keyed by ``customer_id``; a producer retry may repeat one (same ``order_id``).
Only paid orders count; ``net`` is the amount less any discount.
"""

from streams import App, Count, CountDistinct, Max, Mean, Sum, tumbling

app = App("orders-app")
orders = app.topic("orders", schema="schemas/order/v1.json")

(
    app.stream(orders, key="customer_id", timestamp="ts")
    .dedupe("order_id", horizon_ms=3_600_000)
    .filter(lambda o: o["status"] == "paid")
    .map(lambda o: {**o, "net": o["amount"] - o.get("discount", 0)})
    .window(tumbling(60_000), grace_ms=10_000)
    .aggregate(
        orders=Count(),
        revenue=Sum("net"),
        avg=Mean("net"),
        biggest=Max("net"),
        products=CountDistinct("sku"),
    )
    .to("revenue-per-customer")
)
