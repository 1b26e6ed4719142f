"""The built-in adapters: the ones that need no service besides this process and its
store. Each module holds one adapter and the pydantic model of its options."""
