"""The orders example on Avro: Avro orders in, Avro revenue out, schemas in a registry.

    streams registry start                      # or any Confluent-compatible registry
    export STREAMS_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7
    streams topics create examples/avro_orders/app.py
    python -m examples.orders.generate --count 20000 \\
        | streams publish orders-avro - --key-field customer_id \\
              --format avro --schema schemas/order/v1.avsc
    streams worker examples/avro_orders/app.py --exit-when-idle 5
    streams verify examples/avro_orders/app.py

Values of ``orders-avro`` are in the registry's wire format and decoded by their writer's schema
(any registered version); ``revenue-per-customer-avro`` values are written with
``schemas/revenue/v1.avsc``, registered under ``revenue-per-customer-avro-value`` when the worker
starts. An Avro union with null decodes to ``None`` when absent, hence ``or 0``.
"""

from streams import App, Count, CountDistinct, Max, Mean, Sum, tumbling

app = App("avro-orders-app")
orders = app.topic("orders-avro", format="avro")
revenue = app.topic("revenue-per-customer-avro", format="avro", schema="schemas/revenue/v1.avsc")

(
    app.stream(orders, key="customer_id", timestamp="ts")
    .dedupe("order_id", horizon_ms=3_600_000)
    .filter(lambda o: o["status"] == "paid")
    .map(lambda o: {**o, "net": o["amount"] - (o["discount"] or 0)})
    .window(tumbling(60_000), grace_ms=10_000)
    .aggregate(
        orders=Count(),
        revenue=Sum("net"),
        avg=Mean("net"),
        biggest=Max("net"),
        products=CountDistinct("sku"),
    )
    .to(revenue)
)
