"""The client kit every outbound call goes through: discovery, channels, deadlines, retries with
a budget, circuit breaker, bulkhead and tracing, for unary and all three streaming kinds."""
