"""Identity: users, passwords, access tokens and API keys (see docs in each module)."""
