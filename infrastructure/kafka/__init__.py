"""Kafka as every part reaches it: topic names, the clients and their options, and the
consumer loop the workers and the case opener share."""
