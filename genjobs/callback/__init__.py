"""The signed ``job-callback``: payload, signature, delivery and the durable outbox."""
