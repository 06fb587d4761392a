"""tools/broker: the operator CLI for Emporium's RabbitMQ queues and streams."""
