"""The local stack, never deployed: emulators of Azure OpenAI and Key Vault, and a local Functions runner."""
