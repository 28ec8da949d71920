"""The REST front end: accepts images, queues them, answers match queries from Redis."""
