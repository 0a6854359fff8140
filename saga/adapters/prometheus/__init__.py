"""Prometheus adapter: counters, the scrape-time store collector, exposition, multiprocess."""
