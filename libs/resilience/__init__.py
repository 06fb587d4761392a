"""Resilience primitives for outbound calls: retry budget, circuit breaker, bulkhead, backoff.

Why our own: aiobreaker and purgatory open on consecutive failures only (no failure-rate window
with a minimum volume) and do not guarantee a single half-open probe under concurrency; tenacity
retries a callable, but cannot retry a server stream before its first message, share one deadline
across attempts or consult a per-upstream retry budget. These pieces are small, synchronous
(no awaits inside, so no races on one event loop) and used by libs.rpcclient for all RPC kinds.
"""
