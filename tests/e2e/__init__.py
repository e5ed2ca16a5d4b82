"""End-to-end tests: the app in the local runner, real HTTP, real Azurite queues."""
