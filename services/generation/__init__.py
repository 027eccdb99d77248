"""The generation service: a structured prompt in, streamed tokens out, for every model backend."""
