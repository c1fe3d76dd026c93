"""The gRPC hub: durable mailboxes, server, client, TLS."""
