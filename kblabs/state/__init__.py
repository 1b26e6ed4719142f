"""The state broker: key/value with TTL, locks with fencing, counters, rate limits."""
