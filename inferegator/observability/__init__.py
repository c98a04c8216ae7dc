"""What operators watch: Prometheus metrics, the access log, W3C trace context and spans."""
