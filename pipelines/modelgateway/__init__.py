"""The model gateway: Kafka model input topics in, the model called through Envoy, outputs or errors out."""
