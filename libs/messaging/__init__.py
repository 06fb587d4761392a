"""Messaging on RabbitMQ: work queues, event streams, the outbox and the inbox."""
