"""What both tiers share: the CLI, the config and API-key checking. Imports neither
`server` nor `shim` at module level (the CLI starts them as processes), and `genapi.v1`
holds the generated gRPC stubs."""
