"""The `facerec` command: a client of the REST API (and of RabbitMQ for logs and dead letters)."""
