"""The worker entrypoint: consumes images from RabbitMQ and commits results to Redis."""
